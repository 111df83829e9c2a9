"""Turn (image, prompt, response) rows into model tensors through the model's own processor.

Prompt and response are tokenised separately and concatenated (as TRL does), so the prompt tokens seen
in training are exactly the ones generation starts from. Labels are -100 outside the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE = -100


def user_prompt(processor, text: str) -> str:
    """The chat-formatted user turn with one image and the generation prompt, via the processor's template."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompts(processor, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, Any]:
    """Unpadded prompt ids (image tokens expanded) and the processor's pixel values."""
    texts = [user_prompt(processor, p) for p in prompts]
    enc = processor(images=list(images), text=texts, padding=False, return_tensors=None)
    return {"input_ids": enc["input_ids"], "pixel_values": torch.as_tensor(np.asarray(enc["pixel_values"]))}


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    """Response ids: a leading space (the template ends with "ASSISTANT:") and EOS appended."""
    ids = tokenizer([" " + r for r in responses], add_special_tokens=False)["input_ids"]
    return [list(x) + [tokenizer.eos_token_id] for x in ids]


def pad_rows(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
             max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels / prompt_mask for prompt+response rows.

    ``max_length`` truncates the *response* only; a prompt longer than ``max_length`` is an error, because
    cutting a prompt could cut image tokens and silently misalign the image features.
    """
    rows = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if max_length is not None:
            if len(p) >= max_length:
                raise ValueError(f"row {i}: prompt has {len(p)} tokens (image tokens included), "
                                 f"more than max_length={max_length}; raise max_length")
            r = list(r)[: max_length - len(p)]
        rows.append((list(p), list(r)))
    width = max(len(p) + len(r) for p, r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        seq = p + r
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(r)
        prompt_mask[i, : len(p)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "prompt_mask": prompt_mask}


def collate(processor, images: Sequence[Any], prompts: Sequence[str], responses: Sequence[str],
            max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One training batch: padded ids, labels on the response, and normalised ``pixel_values``."""
    enc = encode_prompts(processor, images, prompts)
    out = pad_rows(enc["input_ids"], encode_responses(processor.tokenizer, responses),
                   processor.tokenizer.pad_token_id, max_length)
    out["pixel_values"] = enc["pixel_values"]
    return out
