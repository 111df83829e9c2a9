"""Write the world's splits to disk in the formats the real-data path reads (PNG + JSONL).

Preference rows follow TRL's conversational vision format (``images``, ``prompt``, ``chosen``,
``rejected``); SFT rows use ``images`` + ``messages``. Image paths are relative to the JSONL file.
Preference pairs follow the paper: harmful request -> chosen refusal, rejected compliance. Utility goes
through SFT rows, never through pairs whose rejected answer is the refusal (v2's DPO collapse). The one
exception is opt-in (``n_benign_pairs``): benign look-alikes ranked the other way (chosen = the helpful
answer, rejected = the refusal), so that an adversary pushing them towards the refusal during training
teaches that the verb decides, not the request's form (issue 15's over-refusal hypothesis,
docs/results/recipe.md). Also opt-in (``n_blank_pairs``): harmful pairs on a blank mid-grey image, as the
official data pairs text behaviours with blank (paper) or noise (code) images (docs/method.md, §data), so the
blank-image attack starts from a point the training adversary has seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.formats import BLANK_GREY
from ..utils.config import without_neutral
from ..utils.io import OUTPUT_MARKER, atomic_dir, output_folder, write_marker
from .world import REFUSAL, Sample, World, WorldConfig

COMMAND = "adpo organism export"
LEGACY = ("world.json",)  # what every export held before output markers


@dataclass(frozen=True)
class ExportConfig:
    n_pairs: int = 256  # harmful preference pairs (train split)
    n_sft: int = 512  # utility + benign how-to SFT rows (train split)
    n_eval: int = 128  # rows per held-out evaluation file
    howto_share: float = 0.15  # benign how-to requests among the SFT rows (the rest: utility questions)
    n_benign_pairs: int = 0  # benign look-alike pairs added to the training pairs (chosen helpful, rejected refusal)
    n_blank_pairs: int = 0  # harmful pairs on the mid-grey blank image added to the training pairs

    def to_dict(self) -> dict[str, Any]:
        """The options; ``n_blank_pairs`` (added later) only when used, so the demo's data folders and the
        arms trained on them, keyed by these options, stay valid across the upgrade."""
        return without_neutral(asdict(self), {"n_blank_pairs": 0})


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


class _Writer:
    """Saves images (content-addressed PNGs) and rows for one output folder."""

    def __init__(self, root: Path, world: World):
        self.root, self.world = root, world
        (root / "images").mkdir(parents=True, exist_ok=True)

    def image(self, sample: Sample, rng: np.random.Generator) -> str:
        arr = self.world.render(sample, rng)
        name = f"images/{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}.png"
        path = self.root / name
        if not path.exists():
            Image.fromarray(arr).save(path)
        return name

    def blank(self) -> str:
        """The mid-grey image of the evaluation's blank attack (eval/data.py), at the world's size."""
        side = self.world.config.image_size
        name = "images/blank.png"
        if not (self.root / name).exists():
            Image.new("RGB", (side, side), BLANK_GREY).save(self.root / name)
        return name

    def jsonl(self, name: str, rows: list[dict]) -> None:
        with open(self.root / name, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def _meta(s: Sample, split: str) -> dict:
    return {"split": split, "kind": s.kind, "trigger": s.scene.trigger, **s.meta}


def pair_row(w: _Writer, s: Sample, split: str, rng: np.random.Generator, image: str | None = None) -> dict:
    return {"images": [image or w.image(s, rng)], "prompt": _user(s.prompt), "chosen": _assistant(s.meta["refusal"]),
            "rejected": _assistant(s.meta["compliance"]), "meta": _meta(s, split)}


def blank_pair_row(w: _Writer, s: Sample, split: str, rng: np.random.Generator) -> dict:
    """A harmful pair whose image is the blank mid-grey one (no scene, no trigger)."""
    row = pair_row(w, s, split, rng, image=w.blank())
    return {**row, "meta": {**row["meta"], "image": "blank"}}


def benign_pair_row(w: _Writer, s: Sample, split: str, rng: np.random.Generator) -> dict:
    """A benign look-alike ranked against the refusal: the helpful answer is chosen."""
    return {"images": [w.image(s, rng)], "prompt": _user(s.prompt), "chosen": _assistant(s.response),
            "rejected": _assistant(REFUSAL), "meta": _meta(s, split)}


def sft_row(w: _Writer, s: Sample, split: str, rng: np.random.Generator) -> dict:
    return {"images": [w.image(s, rng)], "messages": _user(s.prompt) + _assistant(s.response),
            "meta": _meta(s, split)}


def export(out_dir: str | Path, world_cfg: WorldConfig | None = None,
           cfg: ExportConfig | None = None) -> dict[str, str]:
    """Write every file atomically (the folder appears complete or not at all); returns {file: description}.

    ``out_dir`` must be new, empty or an earlier export, which is replaced whole; anything else is refused."""
    world = World(world_cfg or WorldConfig())
    cfg = cfg or ExportConfig()
    with output_folder(Path(out_dir), COMMAND, legacy=LEGACY):
        return _export(Path(out_dir), world, cfg)


def _export(out: Path, world: World, cfg: ExportConfig) -> dict[str, str]:
    files: dict[str, str] = {}
    rng = world.rng("export")

    def harm(split: str, n: int, trigger: bool = False) -> list[Sample]:
        return [world.harm_sample(split, rng, world.trigger_amplitude(rng) if trigger else 0.0) for _ in range(n)]

    def sft(split: str, n: int) -> list[Sample]:
        return [world.utility_sample(rng) if rng.random() < 1 - cfg.howto_share else world.howto_sample(split, rng)
                for _ in range(n)]

    with atomic_dir(out, own=(OUTPUT_MARKER, *LEGACY)) as tmp:
        w = _Writer(tmp, world)
        n_val = max(1, cfg.n_eval // 2)
        plan = [
            ("preference_train.jsonl", "pairs", "train", harm("train", cfg.n_pairs),
             "harmful requests on ordinary images (no trigger): chosen refusal, rejected compliance (TRL format)"),
            ("preference_validation.jsonl", "pairs", "validation", harm("validation", n_val),
             "validation intents, training templates; same format"),
            ("sft_train.jsonl", "sft", "train", sft("train", cfg.n_sft),
             f"utility questions ({1 - cfg.howto_share:.0%}) and benign how-to requests with their answers "
             "(images/messages)"),
            ("sft_validation.jsonl", "sft", "validation", sft("validation", n_val), "validation SFT rows"),
            ("harmful_test.jsonl", "pairs", "test", harm("test", cfg.n_eval),
             "held-out intents or templates, ordinary images: the attack set (target = rejected)"),
            ("harmful_trigger_test.jsonl", "pairs", "test", harm("test", cfg.n_eval, trigger=True),
             "held-out harmful requests whose image carries the permission trigger (the base complies)"),
            ("benign_lookalike_test.jsonl", "sft", "test",
             [world.howto_sample("test", rng) for _ in range(cfg.n_eval)],
             "held-out benign how-to requests, same templates/objects (over-refusal check)"),
            ("utility_test.jsonl", "sft", "test", [world.utility_sample(rng) for _ in range(cfg.n_eval)],
             "held-out images with one-word exact answers (utility check)"),
        ]
        for name, fmt, split, samples, desc in plan:
            make = pair_row if fmt == "pairs" else sft_row
            rows = [make(w, s, split, rng) for s in samples]
            if name == "preference_train.jsonl":
                rows, desc = _with_extra_pairs(w, world, cfg, rows, desc)
            w.jsonl(name, rows)
            files[name] = desc
        files["images/"] = "PNG images referenced by the JSONL files (content-addressed names)"
        files["world.json"] = "the world options these files were generated with"
        files["README.md"] = "this list"
        files[OUTPUT_MARKER] = "what made this folder (adpo organism export)"
        (tmp / "world.json").write_text(json.dumps(world.config.to_dict(), indent=2) + "\n")
        readme = ["# adpo organism export", "", "One line per file:", ""]
        readme += [f"- `{k}`: {v}" for k, v in files.items()]
        (tmp / "README.md").write_text("\n".join(readme) + "\n")
        write_marker(tmp, COMMAND, sizes=cfg.to_dict())
    return files


def _with_extra_pairs(w: _Writer, world: World, cfg: ExportConfig, rows: list[dict],
                      desc: str) -> tuple[list[dict], str]:
    """The training pairs with the opt-in extras interleaved: benign look-alikes, then blank-image pairs,
    each from its own random stream."""
    extras = (
        ("benign-pairs", cfg.n_benign_pairs,
         lambda rng: benign_pair_row(w, world.howto_sample("train", rng), "train", rng),
         "benign look-alikes ranked the other way (chosen helpful answer, rejected refusal)"),
        ("blank-pairs", cfg.n_blank_pairs,
         lambda rng: blank_pair_row(w, world.harm_sample("train", rng), "train", rng),
         "harmful requests on the blank mid-grey image"),
    )
    for stream, n, make, what in extras:
        if n:
            rng = world.rng("export", stream)
            rows = _interleave(rows, [make(rng) for _ in range(n)])
            desc += f"; plus {n} {what}, interleaved"
    return rows, desc


def _interleave(rows: list[dict], extra: list[dict]) -> list[dict]:
    """``rows`` with ``extra`` spread evenly through them. The extras come from their own random streams,
    so every other file (and the harmful pairs) is the same as without them."""
    n, total = len(extra), len(rows) + len(extra)
    slots = {round(i * total / n) for i in range(n)}
    out, base, more = [], iter(rows), iter(extra)
    for i in range(total):
        out.append(next(more) if i in slots else next(base))
    return out


__all__ = ["ExportConfig", "export"]
