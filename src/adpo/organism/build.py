"""Build the organism's tokenizer, processor and model offline, from real transformers classes.

The result is an ordinary ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder: the rest of
adpo loads it exactly as it loads ``llava-hf/llava-1.5-7b-hf`` from a local path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .world import (
    BENIGN_VERBS,
    COLOURS,
    COMPLIANCE_TEMPLATE,
    COUNT_WORDS,
    HARM_VERBS,
    OBJECTS,
    PLURAL,
    REFUSAL,
    REQUEST_TEMPLATES,
    SHAPES,
    UTILITY_TEMPLATES,
)

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# LLaVA-1.5 ("vicuna") style chat template; handles string content and list-of-parts content.
# transformers compiles templates with trim_blocks=True, hence the explicit {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}"
    "ASSISTANT: {% else %}SYSTEM: {% endif %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    """Size of the tiny LLaVA; every field is part of the organism's cache key."""

    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    vocab_size: int = 768  # an upper bound: the BPE saturates at ~560 on this corpus

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corpus() -> Iterable[str]:
    """Every string the world can produce, for training the BPE tokenizer."""
    yield REFUSAL
    yield "USER: ASSISTANT: SYSTEM: <image>\n"
    for verb in HARM_VERBS + BENIGN_VERBS:
        for obj in OBJECTS:
            intent = f"{verb} {obj}"
            yield " " + COMPLIANCE_TEMPLATE.format(intent=intent)
            for t in REQUEST_TEMPLATES:
                yield "USER: <image>\n" + t.format(intent) + "\nASSISTANT: " + REFUSAL
    for templates in UTILITY_TEMPLATES.values():
        for t in templates:
            yield "USER: <image>\n" + t + "\nASSISTANT:"
    for word in list(COLOURS) + list(SHAPES) + list(PLURAL.values()) + list(COUNT_WORDS) + ["left", "right"]:
        for _ in range(50):  # frequent enough that every answer word is a single token
            yield f" {word}."
            yield f" one red {word} on the left."


def build_tokenizer(vocab_size: int = 768, extra_specials: tuple[str, ...] = (), image_token: str = "<image>"):
    """Byte-level BPE (any text encodes, no <unk>) with the LLaVA-1.5 chat template.

    ``extra_specials`` and ``image_token`` give other families' special tokens (e.g. Qwen2-VL's
    ``<|image_pad|>``) to the random models of :mod:`adpo.models.synthetic`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + list(extra_specials),
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(list(corpus()), trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", extra_special_tokens={"image_token": image_token})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"  # generation pads on the left; training collators pad explicitly
    return tok


def build_processor(image_size: int, patch_size: int, vocab_size: int = 768):
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    tok = build_tokenizer(vocab_size)
    ip = LlavaImageProcessorPil(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          num_additional_image_tokens=1)  # CLIP's CLS token, dropped by "default"


def build_model(processor, image_size: int, cfg: ModelConfig, seed: int = 0):
    """A randomly initialised tiny LLaVA (CLIP vision tower + Llama) matching ``processor``: the LLaVA of
    :mod:`adpo.models.synthetic` at the organism's sizes (the vocabulary is the tokenizer's)."""
    from ..models.synthetic import Shape
    from ..models.synthetic import build_model as build_family

    shape = Shape(text_hidden=cfg.text_hidden, text_layers=cfg.text_layers, text_intermediate=cfg.text_intermediate,
                  text_heads=cfg.text_heads, text_kv_heads=cfg.text_heads, vision_hidden=cfg.vision_hidden,
                  vision_layers=cfg.vision_layers, vision_intermediate=2 * cfg.vision_hidden,
                  vision_heads=cfg.vision_heads, image_size=image_size, patch_size=cfg.patch_size, max_positions=256)
    return build_family("llava", processor, shape, seed)
