"""What adpo reads from a model and its processor, as a printable summary (``adpo inspect``, run start).

A module of its own because the summary gathers facts from three layers (the model's structure, the
pixel codec, the log-prob chunking) that the structural checks in :mod:`adpo.models.families` do not need.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..objectives.logps import resolve_chunk
from ..threats.codecs import codec_for
from .families import inspect_model, unwrap


def describe(model: nn.Module, processor: Any) -> dict[str, Any]:
    """A printable summary of what adpo uses from a model and its processor (``adpo inspect``, run start)."""
    info = inspect_model(model, processor, warn=False)
    ip = processor.image_processor
    return {"family": info.family, "model_type": info.model_type, "class": type(unwrap(model)).__name__,
            "decoder": f"{info.decoder_path} ({info.n_layers} layers x {info.hidden_size})",
            "vocab_size": info.vocab_size, "image_token_id": info.image_token_id,
            "lora_target (auto)": info.lora_target, "full_train (auto)": info.full_train,
            "pixel_codec": type(codec_for(processor)).__name__,
            "image_processor": type(ip).__name__, "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
            "processor": type(processor).__name__, "logps_chunk (auto)": resolve_chunk(model, None),
            "parameters": sum(p.numel() for p in model.parameters())}
