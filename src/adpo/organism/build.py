"""Build the organism's tokenizer, processor and model offline, from real transformers classes.

The result is an ordinary ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder: the rest of
adpo loads it exactly as it loads ``llava-hf/llava-1.5-7b-hf`` from a local path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .tokenizer import CHAT_TEMPLATE, build_tokenizer


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
