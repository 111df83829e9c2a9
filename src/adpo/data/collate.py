"""Turn (image, prompt, response) rows into model tensors through the model's own processor.

The text is the processor's chat template rendered over the conversation (or a named LLaMA-Factory
template installed on the processor: :mod:`adpo.data.templates`). The prompt is tokenised by the processor
(image tokens expanded), so the prompt tokens seen in training are exactly the ones generation starts from.
Each answer is tokenised *with the text before it* and cut at the prompt's end: its ids are those of the
joined text (:func:`joined_ids`). Tokenising the answer alone differs with a SentencePiece Llama tokenizer,
whose dummy prefix makes the answer's leading space a token of its own that the model never produces
after ``ASSISTANT:``. The answer's wrapping (the leading space, the end-of-turn token) comes from the chat
template, so LLaVA's ``ASSISTANT: …</s>`` and Qwen's ``<|im_start|>assistant\\n…<|im_end|>`` both come
out right. Labels are -100 outside the answers; a multi-turn SFT row trains every assistant turn
(LLaMA-Factory's multi-turn SFT), the user turns between them are context.

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


def user_prompt(processor, text: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The chat-formatted conversation up to the user turn ``text`` (one image, in the first user turn) and
    the generation prompt, via the processor's template; ``history``: earlier (user, assistant) turns."""
    return processor.apply_chat_template(_conversation(history, text), add_generation_prompt=True, tokenize=False)


def _user(text: str, image: bool = True) -> list[dict]:
    parts = [{"type": "image"}] if image else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _conversation(history: Sequence[tuple[str, str]], text: str) -> list[dict]:
    msgs: list[dict] = []
    for k, (u, a) in enumerate(history):
        msgs += _user(u, image=k == 0) + _assistant(a)
    return msgs + _user(text, image=not history)


def prompt_text(processor, row: PairRow | SFTRow) -> str:
    """The text the processor encodes for a row's prompt: a pair's whole history up to its last user turn; an
    SFT row's first user turn (its later turns are part of the trained continuation, :func:`row_pieces`)."""
    if row.formatted:
        return row.prompt
    if isinstance(row, SFTRow) and row.history:
        return user_prompt(processor, row.history[0][0])
    return user_prompt(processor, row.prompt, row.history)


def answer_text(processor, answer: str) -> str:
    """An answer as the chat template wraps it, ending with the end-of-sequence token (appended when the
    template closes a turn without it: llava-hf's ends with a space, so the model learns to stop)."""
    tok = getattr(processor, "tokenizer", processor)
    before, after = _response_wrap(processor)
    eos = tok.eos_token or ""
    return before + answer + after + ("" if not eos or eos in after else eos)


def row_pieces(processor, row: PairRow | SFTRow, answer: str | None = None) -> list[tuple[str, bool]]:
    """The text after :func:`prompt_text` as (text, trained) pieces. A pair (``answer``: its chosen or rejected
    text) has one trained piece; a multi-turn SFT row alternates trained answers and untrained user turns,
    each user turn cut from the template's rendering of the conversation so far."""
    if isinstance(row, PairRow) or row.formatted or not row.history:
        return [(answer_text(processor, row.response if answer is None else answer), True)]
    before, after = _response_wrap(processor)
    turns = [*row.history, (row.prompt, row.response)]
    rendered = user_prompt(processor, turns[0][0])
    pieces: list[tuple[str, bool]] = []
    for k, (u, a) in enumerate(turns):
        if k:
            nxt = user_prompt(processor, u, turns[:k])
            if not nxt.startswith(rendered):
                raise DataError(f"{row.source}: the chat template does not render turn {k + 1} as a continuation "
                                "of the earlier turns; multi-turn SFT needs a template that does")
            pieces.append((nxt[len(rendered):], False))
            rendered = nxt
        pieces.append((answer_text(processor, a), True))
        rendered += before + a + after
    return pieces


def joined_ids(tok, prefix: str, pieces: Sequence[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(ids, labels) of ``pieces`` tokenised *after* ``prefix``: each piece's ids are those of the joined text
    ``prefix + pieces[:i+1]`` past the ids of ``prefix + pieces[:i]``, so an answer starts with the token the
    model produces after the prompt. Where a piece merges with the text before it (the earlier ids are no
    prefix of the joined ones) the piece is tokenised alone. Labels: the ids on trained pieces, else -100."""
    ids: list[int] = []
    labels: list[int] = []
    text = prefix
    done = tok(text, add_special_tokens=False)["input_ids"]
    for piece, trained in pieces:
        text += piece
        full = tok(text, add_special_tokens=False)["input_ids"]
        new = full[len(done):] if full[: len(done)] == done else tok(piece, add_special_tokens=False)["input_ids"]
        done = full
        ids += new
        labels += new if trained else [IGNORE] * len(new)
    eos = tok.eos_token_id
    if eos is not None and pieces and pieces[-1][1] and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def encode_prompts(processor, images: Sequence[Any], prompts: Sequence[str],
                   formatted: Sequence[bool] | None = None) -> dict[str, Any]:
    """Unpadded prompt ids (image tokens expanded), per-token extras and the processor's image tensors.

    Returns ``input_ids`` (list of lists), ``token_extras`` (other per-token outputs such as Qwen's
    ``mm_token_type_ids``, same layout) and every image tensor the processor makes (``pixel_values``,
    LLaVA-NeXT's ``image_sizes``, Qwen's ``image_grid_thw`` …). ``formatted[i]`` marks a prompt that is
    already chat-formatted (TRL's standard form).
    """
    formatted = formatted or [False] * len(prompts)
    return encode_texts(processor, images, [p if f else user_prompt(processor, p) for p, f in zip(prompts, formatted)])


def encode_texts(processor, images: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
    """:func:`encode_prompts` of already chat-formatted prompt texts."""
    enc = processor(images=list(images), text=list(texts), padding=True, return_tensors="pt")
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
             token_extras: dict[str, Sequence[Sequence[int]]] | None = None,
             response_labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels / prompt_mask for prompt+response rows.

    ``response_labels`` (default: the response ids) label the response positions; -100 marks context inside
    the response (the user turns between the answers of a multi-turn SFT row).

    ``token_extras`` (e.g. Qwen's ``mm_token_type_ids``) hold per-prompt-token values; the response and
    padding positions get 0 (plain text).

    ``max_length`` truncates the *response* only; a prompt longer than ``max_length`` is an error, because
    cutting a prompt could cut image tokens and silently misalign the image features.
    """
    rows = []
    labelled = response_labels or response_ids
    for i, (p, r, lab) in enumerate(zip(prompt_ids, response_ids, labelled)):
        r, lab = list(r), list(lab)
        if max_length is not None:
            if len(p) >= max_length:
                where = sources[i] if sources else f"row {i}"
                raise DataError(f"{where}: prompt has {len(p)} tokens (image tokens included), "
                                 f"more than max_length={max_length}; raise max_length")
            r, lab = r[: max_length - len(p)], lab[: max_length - len(p)]
        rows.append((list(p), r, lab))
    width = max(len(p) + len(r) for p, r, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r, lab) in enumerate(rows):
        seq = p + r
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(lab, dtype=torch.long)
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
    """One SFT batch of single-turn rows given as lists (:func:`collate_rows` takes rows)."""
    formatted = formatted or [False] * len(prompts)
    sources = sources or [f"row {i}" for i in range(len(prompts))]
    return collate_rows(processor, images, [SFTRow(None, p, r, s, f) for p, r, s, f in
                                            zip(prompts, responses, sources, formatted)], max_length)


def collate_rows(processor, images: Sequence[Any], rows: Sequence[SFTRow],
                 max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One SFT batch: padded ids, labels on every answer, and the image tensors."""
    texts = [prompt_text(processor, r) for r in rows]
    enc = encode_texts(processor, images, texts)
    tok = processor.tokenizer
    answers = [joined_ids(tok, t, row_pieces(processor, r)) for t, r in zip(texts, rows)]
    out = pad_rows(enc.pop("input_ids"), [a for a, _ in answers], tok.pad_token_id, max_length,
                   [r.source for r in rows], enc.pop("token_extras"), [lab for _, lab in answers])
    return {**out, **enc}


def collate_pairs(processor, images: Sequence[Any], prompts: Sequence[str], chosen: Sequence[str],
                  rejected: Sequence[str], max_length: int | None = None, formatted: Sequence[bool] | None = None,
                  sources: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """One preference batch of single-turn pairs given as lists (:func:`collate_pair_rows` takes rows)."""
    formatted = formatted or [False] * len(prompts)
    sources = sources or [f"row {i}" for i in range(len(prompts))]
    return collate_pair_rows(processor, images, [PairRow(None, p, c, r, s, f) for p, c, r, s, f in
                                                 zip(prompts, chosen, rejected, sources, formatted)], max_length)


def collate_pair_rows(processor, images: Sequence[Any], rows: Sequence[PairRow],
                      max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One preference batch: ``(2B, T)`` text rows [chosen; rejected] and the ``B`` images once."""
    texts = [prompt_text(processor, r) for r in rows]
    enc = encode_texts(processor, images, texts)
    ids = enc.pop("input_ids")
    extras = {k: v + v for k, v in enc.pop("token_extras").items()}
    tok = processor.tokenizer
    answers = [joined_ids(tok, t, row_pieces(processor, r, getattr(r, f)))[0]
               for f in ("chosen", "rejected") for t, r in zip(texts, rows)]
    out = pad_rows(ids + ids, answers, tok.pad_token_id, max_length, [r.source for r in rows] * 2, extras)
    return {**out, **enc}


def prompt_lengths(processor, rows: Sequence[PairRow] | Sequence[SFTRow], image_size: int | None = None) -> list[int]:
    """Each row's prompt length in tokens, image tokens included, without running the image processor on
    every row: the text goes through the tokenizer, and the image tokens are counted once per distinct
    image size by the processor itself (checked against a full encoding of the first row)."""
    from PIL import Image

    tok = processor.tokenizer
    texts = [prompt_text(processor, r) for r in rows]
    text_len = [len(x) for x in tok(texts)["input_ids"]]
    dims = [image_dims(r.image, image_size) for r in rows]
    reference = user_prompt(processor, "x")
    plain = len(tok([reference])["input_ids"][0])
    extra = {d: len(encode_prompts(processor, [Image.new("RGB", d)], ["x"])["input_ids"][0]) - plain
             for d in set(dims)}
    lengths = [n + extra[d] for n, d in zip(text_len, dims)]
    first = rows[0]
    exact = len(encode_texts(processor, [Image.new("RGB", dims[0])], texts[:1])["input_ids"][0])
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
    tok = processor.tokenizer
    for f in fields:
        answers = [joined_ids(tok, prompt_text(processor, r), row_pieces(processor, r, getattr(r, f)))[0]
                   for r in rows]
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
