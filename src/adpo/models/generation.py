"""Batched greedy generation from (image, prompt) pairs through the model's own processor.

Two layers: :func:`prompt_batch` + :func:`decode` for callers that change the inputs between encoding
and decoding (the evaluation's attacks swap in perturbed ``pixel_values`` and install latent hooks), and
:func:`generate` for plain (image, prompt) lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.collate import user_prompt


def prompt_batch(processor, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompt tensors, so every row's answer starts at the same position."""
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        texts = [user_prompt(processor, p) for p in prompts]
        return dict(processor(images=list(images), text=texts, padding=True, return_tensors="pt"))
    finally:
        tok.padding_side = side


@torch.no_grad()
def decode(model, processor, enc: dict[str, torch.Tensor], *, max_new_tokens: int = 32) -> list[str]:
    """Greedy answers for one encoded batch (eval mode during the call; the mode is restored)."""
    tok = processor.tokenizer
    was_training = model.training
    model.eval()
    try:
        enc = {k: v.to(model.device) for k, v in enc.items()}
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    finally:
        model.train(was_training)
    return [o.strip() for o in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def generate(model, processor, images: Sequence[Any], prompts: Sequence[str], *, max_new_tokens: int = 32,
             batch_size: int = 64, pixel_values: torch.Tensor | None = None) -> list[str]:
    """Greedy answers, one per (image, prompt); ``pixel_values`` (already normalised) overrides ``images``."""
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        enc = prompt_batch(processor, images[s: s + batch_size], prompts[s: s + batch_size])
        if pixel_values is not None:
            enc["pixel_values"] = pixel_values[s: s + batch_size].to(enc["pixel_values"].dtype)
        out += decode(model, processor, enc, max_new_tokens=max_new_tokens)
    return out
