"""Randomly initialised models of every tested family, with real processors, built offline.

No machine of this project can download weights, yet every family must run through the same code path
as the organism. These builders make that checkable: a real ``*ForConditionalGeneration`` of the family
(random weights, any size) and a real processor of the family (the organism's byte-level BPE tokenizer with
the family's special tokens, the family's image processor, a chat template in the family's turn format).
The CI tests use :data:`TINY`; ``scripts/gpu_check.sh`` uses :data:`LLAVA_7B` (LLaVA-1.5-7B's shapes).

Qwen2-VL's processor class insists on a video processor, whose class cannot even be looked up without
torchvision (no CPU build of it installs here); :func:`image_only` makes the real ``Qwen2VLProcessor``
without one (:func:`adpo.models.adapters.image_only`), which serves images as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")


@dataclass(frozen=True)
class Shape:
    """Sizes of a random model (``vocab_size`` None: the tokenizer's length)."""

    text_hidden: int = 32
    text_layers: int = 2
    text_intermediate: int = 64
    text_heads: int = 2
    text_kv_heads: int = 2
    vision_hidden: int = 32
    vision_layers: int = 1
    vision_intermediate: int = 64
    vision_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int | None = None
    max_positions: int = 1024
    vision_feature_layer: int = -1


TINY = Shape()
TINY_QWEN = Shape(text_hidden=64, text_heads=4)  # M-RoPE needs head_dim 16 for sections (2, 3, 3)
LLAVA_7B = Shape(text_hidden=4096, text_layers=32, text_intermediate=11008, text_heads=32, text_kv_heads=32,
                 vision_hidden=1024, vision_layers=24, vision_intermediate=4096, vision_heads=16, image_size=336,
                 patch_size=14, vocab_size=32064, max_positions=4096, vision_feature_layer=-2)


def _template(user: str, assistant: str, end: str, image: str) -> str:
    """A chat template in one family's turn format; list-of-parts content, as processors pass it."""
    return (
        "{% for message in messages %}{% if message['role'] == 'user' %}" + user + "{% else %}" + assistant
        + "{% endif %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        + end + "{% endfor %}{% if add_generation_prompt %}" + assistant.rstrip(" ") + "{% endif %}")


QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")
QWEN_TEMPLATE = _template("<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>{{ '\\n' }}",
                          "<|vision_start|><|image_pad|><|vision_end|>")
IDEFICS3_SPECIALS = ("<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
                     *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))
IDEFICS3_TEMPLATE = _template("<|im_start|>User:", "Assistant: ", "<end_of_utterance>{{ '\\n' }}", "<image>")


def sentencepiece_tokenizer(folder: str | Path, vocab_size: int = 320) -> Any:
    """A tiny SentencePiece tokenizer trained offline with Llama's settings (BPE, dummy prefix, byte fallback,
    digits split, no normalisation), loaded as transformers' ``LlamaTokenizer`` with LLaVA's ``<image>`` and
    ``<pad>`` and the LLaVA-1.5 chat template: the tokenizer family whose dummy prefix makes an answer
    tokenised apart start with a token the model never produces (data/collate.py). Needs the
    ``sentencepiece`` and ``protobuf`` packages (the ``dev`` extra)."""
    import sentencepiece as spm
    from transformers import AddedToken, LlamaTokenizer

    from ..data.templates import VICUNA_SYSTEM
    from ..organism.tokenizer import CHAT_TEMPLATE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = [VICUNA_SYSTEM, "USER: What is shown in the image? ASSISTANT: Sorry, I can't do that.",
            "Sure, here's how to describe the picture: a black bear sniffs at a tree in a meadow.",
            "How many people are visible? There are 2 people, 13 birds and 456 cars on the left."] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", add_dummy_prefix=True, byte_fallback=True, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2, num_threads=1)
    tok = LlamaTokenizer.from_pretrained(str(folder), pad_token=AddedToken("<pad>", special=True),
                                         extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(family: str, shape: Shape = TINY, tokenizer: Any = None) -> Any:
    """The family's real processor class around the offline tokenizer and the family's image processor
    (``tokenizer``: another tokenizer for the LLaVA families, e.g. :func:`sentencepiece_tokenizer`)."""
    import transformers as tf

    from ..organism.tokenizer import CHAT_TEMPLATE, build_tokenizer
    from .adapters import image_only

    n = shape.image_size
    if family in ("llava", "llava_next"):
        tok = tokenizer or build_tokenizer()
        if family == "llava":
            ip = tf.LlavaImageProcessorPil(size={"shortest_edge": n}, crop_size={"height": n, "width": n})
            cls = tf.LlavaProcessor
        else:
            ip = tf.LlavaNextImageProcessorPil(size={"shortest_edge": n}, crop_size={"height": n, "width": n},
                                              image_grid_pinpoints=[[n, 2 * n], [2 * n, n], [2 * n, 2 * n]])
            cls = tf.LlavaNextProcessor
        return cls(image_processor=ip, tokenizer=tok, patch_size=shape.patch_size, chat_template=CHAT_TEMPLATE,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        tok = build_tokenizer(extra_specials=QWEN_SPECIALS, image_token="<|image_pad|>")
        tok.eos_token = "<|im_end|>"
        ip = tf.Qwen2VLImageProcessorPil(patch_size=shape.patch_size, merge_size=2, temporal_patch_size=2,
                                         min_pixels=n * n, max_pixels=4 * n * n)
        cls = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        return image_only(cls)(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    if family == "idefics3":
        tok = build_tokenizer(extra_specials=IDEFICS3_SPECIALS)
        tok.eos_token = "<end_of_utterance>"
        ip = tf.Idefics3ImageProcessorPil(size={"longest_edge": 2 * n}, max_image_size={"longest_edge": n},
                                          do_image_splitting=True)
        seq = (n // shape.patch_size) ** 2 // 4  # scale_factor 2: pixel shuffle merges 2x2 patches
        return tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq,
                                    chat_template=IDEFICS3_TEMPLATE)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def _text(tok, shape: Shape) -> dict[str, Any]:
    return dict(vocab_size=shape.vocab_size or len(tok), hidden_size=shape.text_hidden,
                intermediate_size=shape.text_intermediate, num_hidden_layers=shape.text_layers,
                num_attention_heads=shape.text_heads, num_key_value_heads=shape.text_kv_heads,
                max_position_embeddings=shape.max_positions, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)


def build_config(family: str, processor: Any, shape: Shape = TINY) -> Any:
    """The family's config for ``shape``, with token ids from ``processor``'s tokenizer."""
    import transformers as tf

    tok = processor.tokenizer
    text = _text(tok, shape)
    ids = tok.convert_tokens_to_ids
    if family in ("llava", "llava_next"):
        vision = tf.CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                                     num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                                     image_size=shape.image_size, patch_size=shape.patch_size)
        common = dict(vision_config=vision, text_config=tf.LlamaConfig(**text), image_token_index=ids("<image>"),
                      image_seq_length=(shape.image_size // shape.patch_size) ** 2,
                      vision_feature_select_strategy="default", vision_feature_layer=shape.vision_feature_layer,
                      pad_token_id=tok.pad_token_id)
        if family == "llava":
            return tf.LlavaConfig(**common)
        return tf.LlavaNextConfig(image_grid_pinpoints=processor.image_processor.image_grid_pinpoints, **common)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        head = shape.text_hidden // shape.text_heads
        rope = {"rope_type": "default", "rope_theta": 1e4,
                "mrope_section": [head // 8, 3 * head // 16, 3 * head // 16]}
        text = {**text, "rope_parameters": rope}
        vision = dict(depth=shape.vision_layers, hidden_size=shape.vision_hidden, num_heads=shape.vision_heads,
                      patch_size=shape.patch_size, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            vision.update(embed_dim=shape.vision_hidden, hidden_size=shape.text_hidden,
                          mlp_ratio=shape.vision_intermediate // shape.vision_hidden)
            cls = tf.Qwen2VLConfig
        else:
            vision.update(intermediate_size=shape.vision_intermediate, out_hidden_size=shape.text_hidden,
                          fullatt_block_indexes=[shape.vision_layers - 1], window_size=2 * shape.patch_size)
            cls = tf.Qwen2_5_VLConfig
        return cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                   video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                   vision_end_token_id=ids("<|vision_end|>"))
    if family == "idefics3":
        vision = dict(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                      num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                      image_size=shape.image_size, patch_size=shape.patch_size)
        return tf.Idefics3Config(text_config=tf.LlamaConfig(**text), vision_config=vision, scale_factor=2,
                                 image_token_id=ids("<image>"), pad_token_id=tok.pad_token_id)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def build(family: str, shape: Shape | None = None, seed: int = 0, dtype: torch.dtype | None = None,
          device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model, processor) of ``family`` with random weights, created directly in ``dtype`` on ``device``."""
    shape = shape or (TINY_QWEN if family.startswith("qwen") else TINY)
    processor = build_processor(family, shape)
    return build_model(family, processor, shape, seed, dtype, device).eval(), processor


def build_model(family: str, processor: Any, shape: Shape, seed: int = 0, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None) -> Any:
    """A randomly initialised model of ``family`` matching ``processor`` (token ids, generation settings);
    the organism's LLaVA is built here too, from its own processor."""
    from transformers import AutoModelForImageTextToText

    config = build_config(family, processor, shape)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            model = AutoModelForImageTextToText.from_config(config)
    finally:
        torch.set_default_dtype(default)
    tok = processor.tokenizer
    model.generation_config.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id)
    return model


def save(model: Any, processor: Any, path: str | Path) -> Path:
    """A model folder ``adpo train`` / ``adpo eval`` load (``config.json``, weights, processor files)."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
