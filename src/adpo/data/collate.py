"""Turn (image, prompt, response) rows into model tensors through the model's own processor.

Prompt and response are tokenised separately and concatenated (as TRL does), so the prompt tokens seen
in training are exactly the ones generation starts from. The response's wrapping (a leading space, the
end-of-turn token) comes from the processor's chat template, so LLaVA's ``ASSISTANT: …</s>`` and Qwen's
``<|im_start|>assistant\\n…<|im_end|>`` both come out right. Labels are -100 outside the response.

Pair batches put chosen rows first and rejected rows second, ``(2B, T)`` with one shared width, so a
single forward scores both; the image tensors stay at ``B`` (one image per pair, shared by both answers,
as in the paper's code) and :func:`double_images` repeats them for that forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .formats import DataError, PairRow, SFTRow, image_dims

IGNORE = -100
TEXT_KEYS = ("input_ids", "attention_mask", "labels", "prompt_mask")
SENTINEL = "\x00RESPONSE\x00"


def user_prompt(processor, text: str) -> str:
    """The chat-formatted user turn with one image and the generation prompt, via the processor's template."""
    return processor.apply_chat_template(_user(text), add_generation_prompt=True, tokenize=False)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def encode_prompts(processor, images: Sequence[Any], prompts: Sequence[str],
                   formatted: Sequence[bool] | None = None) -> dict[str, Any]:
    """Unpadded prompt ids (image tokens expanded), per-token extras and the processor's image tensors.

    Returns ``input_ids`` (list of lists), ``token_extras`` (other per-token outputs such as Qwen's
    ``mm_token_type_ids``, same layout) and every image tensor the processor makes (``pixel_values``,
    LLaVA-NeXT's ``image_sizes``, Qwen's ``image_grid_thw`` …). ``formatted[i]`` marks a prompt that is
    already chat-formatted (TRL's standard form).
    """
    formatted = formatted or [False] * len(prompts)
    texts = [p if f else user_prompt(processor, p) for p, f in zip(prompts, formatted)]
    enc = processor(images=list(images), text=texts, padding=True, return_tensors="pt")
    keep = [m.bool() for m in enc["attention_mask"]]
    shape = enc["input_ids"].shape
    per_token = {k: _unpad(v, keep) for k, v in enc.items()
                 if k not in ("input_ids", "attention_mask") and torch.is_tensor(v) and v.shape == shape}
    out: dict[str, Any] = {"input_ids": _unpad(enc["input_ids"], keep), "token_extras": per_token}
    out.update({k: v for k, v in enc.items() if k not in per_token and k not in ("input_ids", "attention_mask")
                and torch.is_tensor(v)})
    return out


def _unpad(ids: torch.Tensor, keep: list[torch.Tensor]) -> list[list[int]]:
    return [row[m].tolist() for row, m in zip(ids, keep)]


def _response_wrap(processor) -> tuple[str, str]:
    """(before, after): the text the chat template puts around an assistant answer, cut after EOS.

    Rendered by the processor's own ``apply_chat_template`` (transformers' Jinja environment, which knows
    tags such as ``{% generation %}`` in llava-hf's templates), once per template.
    """
    tok = getattr(processor, "tokenizer", processor)
    template = getattr(processor, "chat_template", None) or tok.chat_template
    key = (template, tok.eos_token)
    if key not in _WRAPS:
        prefix = processor.apply_chat_template(_user("q"), add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(
            _user("q") + [{"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}], tokenize=False)
        before, after = " ", ""
        if full.startswith(prefix) and SENTINEL in full:
            before, after = full[len(prefix):].split(SENTINEL, 1)
        eos = tok.eos_token or ""
        after = after[: after.index(eos) + len(eos)] if eos and eos in after else after.rstrip()
        _WRAPS[key] = (before, after)
    return _WRAPS[key]


_WRAPS: dict[tuple[str, str], tuple[str, str]] = {}


def encode_responses(processor, responses: Sequence[str]) -> list[list[int]]:
    """Response ids as the chat template wraps an assistant answer, always ending with EOS.

    Templates that close a turn without EOS (llava-hf's ends with a space) get EOS appended, so the
    model learns to stop.
    """
    tok = getattr(processor, "tokenizer", processor)
    before, after = _response_wrap(processor)
    ids = tok([before + r + after for r in responses], add_special_tokens=False)["input_ids"]
    if tok.eos_token and tok.eos_token in after:
        return [list(x) for x in ids]
    return [list(x) + [tok.eos_token_id] for x in ids]


def pad_rows(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
             max_length: int | None = None, sources: Sequence[str] | None = None,
             token_extras: dict[str, Sequence[Sequence[int]]] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels / prompt_mask for prompt+response rows.

    ``token_extras`` (e.g. Qwen's ``mm_token_type_ids``) hold per-prompt-token values; the response and
    padding positions get 0 (plain text).

    ``max_length`` truncates the *response* only; a prompt longer than ``max_length`` is an error, because
    cutting a prompt could cut image tokens and silently misalign the image features.
    """
    rows = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if max_length is not None:
            if len(p) >= max_length:
                where = sources[i] if sources else f"row {i}"
                raise DataError(f"{where}: prompt has {len(p)} tokens (image tokens included), "
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
    out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "prompt_mask": prompt_mask}
    for key, values in (token_extras or {}).items():
        out[key] = torch.zeros((n, width), dtype=torch.long)
        for i, v in enumerate(values):
            out[key][i, : len(v)] = torch.tensor(v)
    return out


def collate(processor, images: Sequence[Any], prompts: Sequence[str], responses: Sequence[str],
            max_length: int | None = None, formatted: Sequence[bool] | None = None,
            sources: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """One SFT batch: padded ids, labels on the response, and the image tensors."""
    enc = encode_prompts(processor, images, prompts, formatted)
    out = pad_rows(enc.pop("input_ids"), encode_responses(processor, responses),
                   processor.tokenizer.pad_token_id, max_length, sources, enc.pop("token_extras"))
    return {**out, **enc}


def collate_pairs(processor, images: Sequence[Any], prompts: Sequence[str], chosen: Sequence[str],
                  rejected: Sequence[str], max_length: int | None = None, formatted: Sequence[bool] | None = None,
                  sources: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """One preference batch: ``(2B, T)`` text rows [chosen; rejected] and the ``B`` images once."""
    enc = encode_prompts(processor, images, prompts, formatted)
    ids = enc.pop("input_ids")
    extras = {k: v + v for k, v in enc.pop("token_extras").items()}
    out = pad_rows(ids + ids, encode_responses(processor, list(chosen) + list(rejected)),
                   processor.tokenizer.pad_token_id, max_length, list(sources or []) * 2 or None, extras)
    return {**out, **enc}


def prompt_lengths(processor, rows: Sequence[PairRow] | Sequence[SFTRow], image_size: int | None = None) -> list[int]:
    """Each row's prompt length in tokens, image tokens included, without running the image processor on
    every row: the text goes through the tokenizer, and the image tokens are counted once per distinct
    image size by the processor itself (checked against a full encoding of the first row)."""
    from PIL import Image

    tok = processor.tokenizer
    texts = [r.prompt if r.formatted else user_prompt(processor, r.prompt) for r in rows]
    text_len = [len(x) for x in tok(texts)["input_ids"]]
    dims = [image_dims(r.image, image_size) for r in rows]
    reference = user_prompt(processor, "x")
    plain = len(tok([reference])["input_ids"][0])
    extra = {d: len(encode_prompts(processor, [Image.new("RGB", d)], ["x"])["input_ids"][0]) - plain
             for d in set(dims)}
    lengths = [n + extra[d] for n, d in zip(text_len, dims)]
    first = rows[0]
    exact = len(encode_prompts(processor, [Image.new("RGB", dims[0])], [first.prompt], [first.formatted])
                ["input_ids"][0])
    if exact != lengths[0]:
        raise RuntimeError(f"{type(processor).__name__}: counting image tokens apart from the text gives {lengths[0]} "
                           f"tokens for {first.source}, the processor {exact}; the length check cannot be trusted")
    return lengths


def check_lengths(processor, rows: Sequence[PairRow] | Sequence[SFTRow], context: int | None,
                  max_length: int | None = None, image_size: int | None = None) -> None:
    """Refuse, naming the row, a prompt (image tokens included) that leaves no room for an answer within
    ``max_length`` or the model's context (``max_position_embeddings``), and, when ``max_length`` does not
    cut answers, a prompt + answer longer than the context: positions beyond it are garbage, silently."""
    if context is not None and max_length is not None and max_length > context:
        raise DataError(f"max_length={max_length} is more than the model's context of {context} tokens "
                        "(max_position_embeddings); lower it")
    limit, name = (max_length, f"max_length={max_length}; raise max_length") if max_length is not None else \
        (context, f"the model's context of {context} tokens (max_position_embeddings)")
    if limit is None:
        return
    lengths = prompt_lengths(processor, rows, image_size)
    for r, n in zip(rows, lengths):
        if n >= limit:
            raise DataError(f"{r.source}: field 'prompt': prompt has {n} tokens (image tokens included), "
                            f"more than {name}")
    if max_length is not None or context is None:
        return  # answers are cut to fit max_length (pad_rows)
    fields = ("chosen", "rejected") if isinstance(rows[0], PairRow) else ("response",)
    for f in fields:
        answers = encode_responses(processor, [getattr(r, f) for r in rows])
        for r, n, a in zip(rows, lengths, answers):
            if n + len(a) > context:
                raise DataError(f"{r.source}: field '{f}': prompt and answer have {n + len(a)} tokens, more than the "
                                f"model's context of {context} (max_position_embeddings); shorten it, or set "
                                "train.max_length to cut answers")


def is_text_key(batch: dict[str, torch.Tensor], key: str) -> bool:
    """Per-token row tensors (ids, masks, labels, Qwen's ``mm_token_type_ids``) share ``input_ids``' shape."""
    return key in TEXT_KEYS or (torch.is_tensor(batch[key]) and batch[key].shape == batch["input_ids"].shape)


def image_keys(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tensors of a batch (everything that is not a per-token row tensor)."""
    return {k: v for k, v in batch.items() if not is_text_key(batch, k)}


def double_images(images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Repeat every image tensor for the [chosen; rejected] rows. Image tensors are concatenations over
    images in order (LLaVA ``(B,3,H,W)``, NeXT ``(B,n,3,H,W)``, Qwen patches ``(ΣP, d)`` with ``grid_thw``),
    so concatenating each with itself describes images ``0..B-1, 0..B-1``."""
    return {k: torch.cat([v, v]) for k, v in images.items()}


def halves(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(chosen, rejected) sub-batches of a pair batch, each with the (shared) image tensors."""
    n = batch["input_ids"].shape[0] // 2
    text = {k: v for k, v in batch.items() if is_text_key(batch, k)}
    imgs = image_keys(batch)
    return ({**{k: v[:n] for k, v in text.items()}, **imgs}, {**{k: v[n:] for k, v in text.items()}, **imgs})
