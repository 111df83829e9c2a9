"""Batched greedy generation from (image, prompt) pairs through the model's own processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.collate import user_prompt


@torch.no_grad()
def generate(model, processor, images: Sequence[Any], prompts: Sequence[str], *, max_new_tokens: int = 32,
             batch_size: int = 64, pixel_values: torch.Tensor | None = None) -> list[str]:
    """Greedy answers, one per (image, prompt); ``pixel_values`` (already normalised) overrides ``images``.

    Prompts are left-padded so every row's answer starts at the same position.
    """
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for s in range(0, len(prompts), batch_size):
            texts = [user_prompt(processor, p) for p in prompts[s: s + batch_size]]
            enc = processor(images=list(images[s: s + batch_size]), text=texts, padding=True, return_tensors="pt")
            if pixel_values is not None:
                enc["pixel_values"] = pixel_values[s: s + batch_size].to(enc["pixel_values"].dtype)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
        model.train(was_training)
    return [o.strip() for o in out]
