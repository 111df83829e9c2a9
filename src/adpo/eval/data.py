"""What the evaluation runs on: harmful behaviours (with a target and a refusal) and benign rows.

Harmful behaviours come from any preference file the training side reads (TRL, LLaMA-Factory, SPA-VL …):
``prompt`` + image, ``rejected`` = the attack's target (compliance) string, ``chosen`` = the refusal.
Rows that share a behaviour id (``behavior_id``/``BehaviorID`` column or meta, else the organism's
``intent``) are test cases of one behaviour; ASR is averaged per behaviour first (HarmBench).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.formats import load_rows, open_image
from ..utils.config import ConfigError


@dataclass(frozen=True)
class Row:
    """One evaluation item: a harmful behaviour (``target`` set) or a benign row (``answer`` set)."""

    doc_id: int
    prompt: str
    image: Image.Image
    behavior_id: str
    category: str = ""
    target: str = ""
    refusal: str = ""
    answer: str = ""
    behavior: str = ""  # the behaviour in words, for judges (defaults to the prompt; FigStep: the instruction)
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)


def _behaviour_id(meta: dict, i: int) -> str:
    for key in ("behavior_id", "BehaviorID", "intent", "id", "index"):
        if key in meta:
            return str(meta[key])
    return f"row{i}"


def load_harmful(path: str | Path, limit: int | None = None) -> list[Row]:
    rows = load_rows(path, "pairs")[:limit]
    bad = next((r for r in rows if r.formatted), None)
    if bad is not None:
        raise ConfigError(f"{bad.source}: field 'prompt': evaluation needs a plain or conversational prompt, "
                          "not a chat-formatted string")
    bad = next((r for r in rows if r.history), None)
    if bad is not None:
        raise ConfigError(f"{bad.source}: field 'prompt': evaluation attacks single-turn behaviours; this row has "
                          f"{len(bad.history)} earlier turn(s)")
    return [Row(i, r.prompt, open_image(r.image), _behaviour_id(r.meta, i),
                str(r.meta.get("category", r.meta.get("category_name", ""))), target=r.rejected, refusal=r.chosen,
                source=r.source, meta=r.meta) for i, r in enumerate(rows)]


def load_benign(path: str | Path, limit: int | None = None) -> list[Row]:
    rows = load_rows(path, "sft")[:limit]
    return [Row(i, r.prompt, open_image(r.image), _behaviour_id(r.meta, i), str(r.meta.get("category", "")),
                answer=r.response, source=r.source, meta=r.meta) for i, r in enumerate(rows)]


def source_image(row: Row, source: str, seed: int) -> Image.Image:
    """The attack's starting image: the row's own (``given``), mid-grey (``blank``), seeded ``noise``, or
    ``trigger``: the organism's own jailbreak context (its +1/-1 checkerboard) at full amplitude on grey,
    a gradient-free probe of what an unconstrained attacker can reach."""
    if source == "given":
        return row.image
    w, h = row.image.size
    if source == "trigger":
        from ..organism.world import checkerboard

        board = checkerboard(max(w, h))[:h, :w]
        return Image.fromarray(np.repeat(((0.5 + 0.5 * board) * 255).round().astype(np.uint8)[..., None], 3, 2))
    if source == "blank":
        return Image.new("RGB", (w, h), (128, 128, 128))
    if source == "noise":
        rng = np.random.default_rng([seed, row.doc_id])
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    raise ValueError(f"unknown image source {source!r}: given, blank, noise or trigger")


def tensor_sha256(x: torch.Tensor) -> str:
    """Hash of an image as the model saw it in [0,1] (float32 bytes; adversarial images are not quantised)."""
    return hashlib.sha256(x.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def image_sha256(img: Any) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()
