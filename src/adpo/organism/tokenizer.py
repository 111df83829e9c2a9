"""The organism's tokenizer: byte-level BPE trained on every string the world can produce, with the
LLaVA-1.5 ("vicuna") chat template.

Its own module because two builders use it: the organism (:mod:`adpo.organism.build`) and the random
models of every family (:mod:`adpo.models.synthetic`), which add their family's special tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

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
