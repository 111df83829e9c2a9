"""The evaluation tasks: each expands into subtasks (one per budget or image source), run batch by batch.

A task is a function ``(config, data) -> [Subtask]`` registered under its name; a subtask knows its rows
and how to produce one :class:`~adpo.eval.attacks.Outcome` per row for a batch. Subtask names are what
results.json, the report and ``adpo demo`` use: ``clean``, ``pgd-image@16/255``, ``pgd-image@inf``,
``pgd-blank``, ``pgd-noise``, ``universal-image@16/255``, ``universal-blank``, ``latent@0.25``,
``figstep``, ``utility``, ``over-refusal``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..threats.budget import eps_label, parse_eps
from ..threats.image import ImagePGD
from ..threats.latent import LatentPGD
from ..threats.protocol import Threat
from ..threats.registry import THREATS
from ..threats.universal import UniversalImagePGD
from ..utils.config import ConfigError, build
from . import figstep
from .attacks import Outcome, Target, ensemble, respond, universal_delta, with_delta
from .data import Row, load_benign, load_harmful, source_image
from .scorers import scorer
from .store import config_hash
from .suites import attack_names, suite_attacks

if TYPE_CHECKING:  # the config validates task names against TASKS, so it imports this module
    from .config import EvalConfig

RunBatch = Callable[[Target, list[Row]], list[Outcome]]


@dataclass
class Subtask:
    task: str
    name: str
    kind: str  # "harmful" | "utility" | "over-refusal"
    attack_type: str  # JailbreakBench's: white_box | black_box | none
    params: dict
    rows: list[Row]
    run: RunBatch
    budget: float | None = None  # the x-axis of ASR-vs-budget plots
    extra: dict = field(default_factory=dict)


class Data:
    """The evaluation's rows, loaded on first use; errors name the missing option."""

    def __init__(self, cfg: EvalConfig, defaults: dict[str, str] | None = None):
        self.cfg, self.defaults = cfg, defaults or {}

    def path(self, key: str) -> str:
        value = getattr(self.cfg.data, key) or self.defaults.get(key)
        if not value:
            raise ConfigError(f"this task needs data.{key}=<file> (a {key} dataset); only the organism has defaults")
        return value

    @functools.cached_property
    def harmful(self) -> list[Row]:
        return load_harmful(self.path("harmful"), self.cfg.limit)

    @functools.cached_property
    def utility(self) -> list[Row]:
        return load_benign(self.path("utility"), self.cfg.benign_limit)

    @functools.cached_property
    def benign(self) -> list[Row]:
        return load_benign(self.path("benign"), self.cfg.benign_limit)

    @functools.cached_property
    def universal_train(self) -> list[Row]:
        rows = load_harmful(self.path("universal_train"), self.cfg.universal_image.train_n)
        held = {r.behavior_id for r in self.harmful}
        return [r for r in rows if r.behavior_id not in held] or rows

    @functools.cached_property
    def figstep(self) -> list[Row]:
        fs = self.cfg.figstep
        src = self.cfg.data.figstep
        items = (figstep.load_instructions(src)[: self.cfg.limit] if src else
                 [{"instruction": r.prompt, "question": r.prompt, "category": r.category, "row": r}
                  for r in self.harmful])
        out = []
        for i, it in enumerate(items):
            base = it.get("row")
            img = figstep.render(it["instruction"], size=fs.size, font_size=fs.font_size, font_path=fs.font)
            out.append(Row(i, fs.prompt, img, base.behavior_id if base else f"row{i}", it["category"],
                           target=base.target if base else "", refusal=base.refusal if base else "",
                           behavior=it["question"], source=base.source if base else str(src),
                           meta=base.meta if base else it["meta"]))
        return out


TASKS: dict[str, Callable[[EvalConfig, Data], list[Subtask]]] = {}


def task(name: str):
    def register(fn):
        TASKS[name] = fn
        return fn
    return register


def _plain(prompts_of: Callable[[Row], str] = lambda r: r.prompt) -> RunBatch:
    return lambda t, rows: respond(t, rows, [r.image for r in rows], [prompts_of(r) for r in rows])


@task("clean")
def clean(cfg: EvalConfig, data: Data) -> list[Subtask]:
    return [Subtask("clean", "clean", "harmful", "none", {}, data.harmful, _plain(), budget=0.0)]


def _pgd(cfg: EvalConfig, source: str, eps: float, steps: int) -> tuple[ImagePGD, RunBatch]:
    pgd = ImagePGD(eps=min(eps, 1.0), step_size=cfg.pgd_image.step_size(eps), steps=steps,
                   random_start=cfg.pgd_image.random_start, norm="linf")

    def run(t: Target, rows: list[Row]) -> list[Outcome]:
        return ensemble(t, rows, [source_image(r, source, cfg.seed) for r in rows], seed=cfg.seed,
                        attacks=suite_attacks(cfg.suite, pgd))
    return pgd, run


def _suite_params(cfg: EvalConfig, base: Threat) -> dict:
    return {"check_every": cfg.check_every, "restarts": cfg.restarts, "objective": "target_nll",
            "suite": cfg.suite, "attacks": attack_names(cfg.suite, base)}


def _image_plan(task: str, budgets: tuple, whole: dict[str, str]) -> list[tuple[str, float, str]]:
    """(image source, budget, subtask name): ``task@<eps>`` on the given image for each budget, then one
    unconstrained subtask per extra source (``whole``: source -> name)."""
    plan = [("given", parse_eps(e), f"{task}@{eps_label(parse_eps(e))}") for e in budgets]
    return plan + [(source, float("inf"), name) for source, name in whole.items()]


@task("pgd-image")
def pgd_image(cfg: EvalConfig, data: Data) -> list[Subtask]:
    c = cfg.pgd_image
    out = []
    for source, eps, name in _image_plan("pgd-image", c.eps, {s: f"pgd-{s}" for s in ("blank", "noise")
                                                             if getattr(c, s)}):
        pgd, run = _pgd(cfg, source, eps, c.steps if source == "given" else c.blank_steps)
        params = {"source": source, **pgd.to_dict(), **_suite_params(cfg, pgd)}
        out.append(Subtask("pgd-image", name, "harmful", "white_box", params, data.harmful, run,
                           budget=eps if source == "given" else None))
    return out


@task("universal-image")
def universal_image(cfg: EvalConfig, data: Data) -> list[Subtask]:
    c = cfg.universal_image
    out = []
    for source, eps, name in _image_plan("universal-image", c.eps, {"blank": "universal-blank"} if c.blank else {}):
        pgd = UniversalImagePGD(eps=min(eps, 1.0), step_size=c.step_size, steps=c.steps, random_start=True)
        cache: dict[int, tuple[torch.Tensor, float]] = {}

        def run(t: Target, rows: list[Row], pgd: UniversalImagePGD = pgd, source: str = source,
                cache: dict = cache) -> list[Outcome]:
            if id(t) not in cache:  # one image per model, optimised on the training behaviours only
                train = data.universal_train
                cache[id(t)] = universal_delta(t, train, [source_image(r, source, cfg.seed) for r in train], pgd,
                                               cfg.seed)
            delta, train_loss = cache[id(t)]
            outs = respond(t, rows, [source_image(r, source, cfg.seed) for r in rows], [r.prompt for r in rows],
                           snap_of=with_delta(t, delta))
            for o in outs:
                o.loss = train_loss
            return outs
        params = {"source": source, **pgd.to_dict(), "train_n": len(data.universal_train),
                  "train_data": data.path("universal_train"), "objective": "target_nll"}
        out.append(Subtask("universal-image", name, "harmful", "white_box", params, data.harmful, run,
                           budget=eps if source == "given" else None))
    return out


@task("latent")
def latent(cfg: EvalConfig, data: Data) -> list[Subtask]:
    c = cfg.latent
    out = []
    for eps in c.eps:
        lat = LatentPGD(eps=float(eps), step_size=c.step_size, steps=c.steps, layers=tuple(c.layers),
                        optimizer=c.optimizer, relative=True)

        def run(t: Target, rows: list[Row], lat: LatentPGD = lat) -> list[Outcome]:
            return ensemble(t, rows, [r.image for r in rows], seed=cfg.seed, attacks=suite_attacks(cfg.suite, lat))
        params = {**lat.to_dict(), **_suite_params(cfg, lat)}
        out.append(Subtask("latent", f"latent@{float(eps):g}", "harmful", "white_box", params, data.harmful, run,
                           budget=float(eps)))
    return out


def attack_threat(spec: dict) -> tuple[str, Threat]:
    """(subtask name, threat) of one ``attacks`` entry: ``threat`` names a registered threat model, ``name``
    the subtask (default: the threat's name), every other key is a setting of that threat's dataclass."""
    spec = dict(spec)
    kind = spec.pop("threat", None)
    if kind not in THREATS or not THREATS[kind].section:
        usable = [n for n, c in THREATS.items() if c.section]
        raise ConfigError(f"attacks entry {spec}: 'threat' must be one of {usable}, got {kind!r}")
    label = str(spec.pop("name", kind))
    return label, build(THREATS[kind], spec, f"attacks[{label}]")


@task("attacks")
def attacks(cfg: EvalConfig, data: Data) -> list[Subtask]:
    """Any registered threat model on the behaviours' own images, as configured in ``attacks``."""
    out = []
    for spec in cfg.attacks:
        label, threat = attack_threat(spec)

        def run(t: Target, rows: list[Row], threat: Threat = threat) -> list[Outcome]:
            return ensemble(t, rows, [r.image for r in rows], seed=cfg.seed, attacks=suite_attacks(cfg.suite, threat))
        params = {"threat": spec["threat"], **threat.to_dict(), **_suite_params(cfg, threat)}
        out.append(Subtask("attacks", label, "harmful", "white_box", params, data.harmful, run))
    return out


@task("trigger")
def trigger(cfg: EvalConfig, data: Data) -> list[Subtask]:
    """The organism's jailbreak context painted at full amplitude on grey, no search (a gradient-masking
    check: an unconstrained white-box attack should find at least this). Organism data only."""
    rows = data.harmful
    if rows and "intent" not in rows[0].meta:
        raise ConfigError("the trigger task paints the organism's own jailbreak context: organism data only")
    return [Subtask("trigger", "trigger", "harmful", "black_box", {"source": "trigger", "amplitude": 1.0}, rows,
                    lambda t, rs: respond(t, rs, [source_image(r, "trigger", cfg.seed) for r in rs],
                                          [r.prompt for r in rs]))]


@task("figstep")
def figstep_task(cfg: EvalConfig, data: Data) -> list[Subtask]:
    fs = cfg.figstep
    params = {"prompt": fs.prompt, "size": fs.size, "font_size": fs.font_size,
              "font": figstep.font(fs.font_size, fs.font)[1], "data": cfg.data.figstep or "harmful prompts"}
    return [Subtask("figstep", "figstep", "harmful", "black_box", params, data.figstep, _plain())]


@task("utility")
def utility(cfg: EvalConfig, data: Data) -> list[Subtask]:
    return [Subtask("utility", "utility", "utility", "none", {"scorer": cfg.utility.scorer}, data.utility, _plain(),
                    extra={"scorer": scorer(cfg.utility.scorer)})]


@task("over-refusal")
def over_refusal(cfg: EvalConfig, data: Data) -> list[Subtask]:
    return [Subtask("over-refusal", "over-refusal", "over-refusal", "none", {}, data.benign, _plain())]


def subtasks(cfg: EvalConfig, data: Data) -> list[Subtask]:
    return [s for name in cfg.tasks for s in TASKS[name](cfg, data)]


def organism_defaults(model_dir: str | Path, out: Path) -> dict[str, str] | None:
    """For an organism model: export its held-out evaluation files once (cached under ``out``)."""
    from ..organism.export import ExportConfig, export
    from ..organism.pretrain import MARKER
    from ..organism.world import WorldConfig

    marker = Path(model_dir) / MARKER
    if not marker.is_file():
        return None
    import json

    world = WorldConfig.from_dict(json.loads(marker.read_text())["world"])
    sizes = ExportConfig(n_pairs=128, n_sft=8, n_eval=256)  # 256 held-out rows per file (EvalConfig.benign_limit)
    folder = out / f"organism-data-{config_hash([world.to_dict(), sizes.to_dict()])}"
    if not (folder / "README.md").is_file():
        export(folder, world, sizes)
    return {"harmful": str(folder / "harmful_test.jsonl"), "utility": str(folder / "utility_test.jsonl"),
            "benign": str(folder / "benign_lookalike_test.jsonl"),
            "universal_train": str(folder / "preference_train.jsonl")}
