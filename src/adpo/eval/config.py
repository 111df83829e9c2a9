"""Evaluation options: one dataclass per task section, YAML + ``section.key=value`` overrides.

Budgets use the one vocabulary of :mod:`adpo.threats.budget` (``"16/255"``, a float in pixel units, or
``"inf"``, the unconstrained attack that only clips to [0, 1]). An attack's step rule defaults to its
threat model's own dataclass defaults (:class:`~adpo.threats.image.ImagePGD`,
:class:`~adpo.threats.latent.LatentPGD`); what is evaluation-specific (budget sweeps, the blank image's
steps) lives here. Defaults are chosen to be *at least* as strong as the shipped training configs
(configs/organism.yaml trains with 5-step attacks; evaluation attacks use 100+ steps). Task names are
the keys of :data:`adpo.eval.tasks.TASKS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data.templates import MODEL, TEMPLATES
from ..threats.budget import parse_eps
from ..threats.image import ImagePGD
from ..threats.latent import LatentPGD
from ..threats.universal import UniversalImagePGD
from ..utils.config import ConfigError, build, option
from . import figstep
from .suites import SUITES
from .tasks import TASKS, attack_threat


def transfer_source(item: str) -> tuple[str, str | None]:
    """``LABEL=PATH`` (or ``PATH``, labelled by its folder name; ``base`` = the base model) -> (label, path)."""
    label, sep, path = str(item).partition("=")
    if not sep:
        label, path = str(item).rstrip("/").rsplit("/", 1)[-1], str(item)
    if not label or not path:
        raise ConfigError(f"transfer_from entry {item!r}: expected LABEL=PATH")
    return label, None if path == "base" else path


@dataclass(frozen=True)
class DataConfig:
    harmful: str | None = option(None, "harmful behaviours: preference pairs (prompt, image, chosen = refusal, "
                                       "rejected = target)")
    utility: str | None = option(None, "utility SFT rows: prompt, image, the exact answer")
    benign: str | None = option(None, "SFT rows of benign look-alike requests (over-refusal)")
    universal_train: str | None = option(None, "pairs the universal image is optimised on (disjoint from "
                                               "harmful)")
    figstep: str | None = option(None, "SafeBench-style CSV/JSONL with instruction; default: the harmful prompts")


@dataclass(frozen=True)
class PGDImageConfig:
    eps: tuple = option(("4/255", "8/255", "16/255", "32/255", "64/255", "inf"), "budgets swept on the "
                        "behaviour's own image")
    steps: int = option(ImagePGD.steps, "attack steps per budget")
    step_frac: float = option(0.1, "step size = max(min_step, step_frac × eps)")
    min_step: float = option(1 / 255, "the smallest step size")
    random_start: bool = option(ImagePGD.random_start, "start from a random point of the ball")
    blank: bool = option(True, "also attack a grey image, unconstrained (HarmBench MMPGDBlank)")
    noise: bool = option(False, "also attack a uniform-noise image, unconstrained")
    blank_steps: int = option(300, "steps of the blank / noise attack")
    blank_step_size: float = option(ImagePGD.step_size, "step size of the blank / noise attack")

    def step_size(self, eps: float) -> float:
        return self.blank_step_size if eps >= 1 else max(self.min_step, self.step_frac * eps)


@dataclass(frozen=True)
class UniversalConfig:
    eps: tuple = option(("16/255",), "budgets of one shared delta added to every held-out image")
    blank: bool = option(True, "plus one unconstrained image replacing every held-out image (Qi et al.)")
    steps: int = option(200, "optimisation steps")
    step_size: float = option(UniversalImagePGD.step_size, "step size")
    train_n: int = option(32, "training behaviours the image is optimised on")


@dataclass(frozen=True)
class LatentConfig:
    eps: tuple = option((0.1, 0.25, 0.5, 1.0), "budgets, × the layer's median clean token norm")
    layers: tuple = option(LatentPGD.layers, "decoder layers perturbed (negative: from the end)")
    steps: int = option(50, "attack steps")
    step_size: float = option(LatentPGD.step_size, "step size")
    optimizer: str = option(LatentPGD.optimizer, "step rule: sign | adam | sign-adam | apgd")


@dataclass(frozen=True)
class FigStepConfig:
    prompt: str = option(figstep.PROMPT, "the text prompt sent with the typographic image")
    size: int = option(760, "image side in pixels")
    font_size: int = option(80, "font size in pixels")
    font: str | None = option(None, "a TrueType font file; null: the bundled default")


@dataclass(frozen=True)
class UtilityConfig:
    scorer: str = option("exact", "exact, or module:function taking (response, answer) -> bool | float")


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple = option(("clean", "pgd-image", "latent", "figstep", "utility", "over-refusal"),
                          "tasks to run (comma list or YAML list)")
    seed: int = option(0, "seed of the attacks' random starts")
    limit: int | None = option(64, "behaviours (rows) per task; null: all")
    benign_limit: int | None = option(256, "rows of the utility and over-refusal tasks: more than limit, as "
                                           "they are cheap (generation only) and their targets a few points wide "
                                           "(256 rows: a 95% interval of about ±3.5 points at 90%); null: all")
    batch_size: int = option(64, "behaviours attacked and generated together")
    max_new_tokens: int = option(32, "tokens generated per response")
    judges: tuple | None = option(None, "judges (comma list); null: organism + gcg13 + llm_attacks29 on organism "
                                        "data, else the two string lists")
    judge_llm: str | None = option(None, "the llm judge's local folder or OpenAI-compatible URL")
    judge_llm_model: str = option("judge", "the llm judge's model name at that URL")
    check_every: int = option(10, "generate from the attack's iterate every N steps (success at any checkpoint)")
    suite: str = option("strong", "attacks per subtask, worst case per behaviour (adpo.eval.suites): strong | "
                                  "standard")
    restarts: int = option(1, "attack attempts (fresh random starts) for behaviours not yet jailbroken")
    dtype: str | None = option(None, "model dtype (float32, bfloat16); null: as saved")
    logps_chunk: int | None = option(None, "response tokens per log-prob chunk; 0: full logits; null: auto "
                                           "(vocab >= 32k)")
    image_size: int | None = option(None, "resize images to N×N first (Qwen2-VL: one patch grid per attacked "
                                          "batch)")
    template: str | None = option(None, "prompt template: model | llava | vicuna; null: the one the adapter was "
                                        "trained with")
    attacks: tuple = option((), "the attacks task: registered threat models with their settings, e.g. "
                                "[{threat: image, name: l2@1.0, norm: l2, eps: 1.0, step_size: 0.1, steps: 100}]")
    transfer_from: tuple = option((), "transfer attacks: LABEL=PATH models (adapter / run / model folder, or "
                                      "LABEL=base) whose white-box image attacks are replayed on the evaluated "
                                      "model")
    data: DataConfig = option(factory=DataConfig, help="input files")
    pgd_image: PGDImageConfig = option(factory=PGDImageConfig, help="the pgd-image task")
    universal_image: UniversalConfig = option(factory=UniversalConfig, help="the universal-image task")
    latent: LatentConfig = option(factory=LatentConfig, help="the latent task")
    figstep: FigStepConfig = option(factory=FigStepConfig, help="the figstep task")
    utility: UtilityConfig = option(factory=UtilityConfig, help="the utility task")

    SECTIONS = {"data": DataConfig, "pgd_image": PGDImageConfig, "universal_image": UniversalConfig,
                "latent": LatentConfig, "figstep": FigStepConfig, "utility": UtilityConfig}

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
        if self.suite not in SUITES:
            raise ConfigError(f"unknown suite {self.suite!r}; known: {list(SUITES)}")
        if self.template is not None and self.template not in (MODEL, *TEMPLATES):
            raise ConfigError(f"unknown template {self.template!r}; known: {[MODEL, *TEMPLATES]}")
        if self.restarts < 1 or self.batch_size < 1 or self.check_every < 0:
            raise ConfigError("restarts and batch_size must be >= 1, check_every >= 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (rows per task) or null (every row), got {self.limit}")
        if self.benign_limit is not None and self.benign_limit < 1:
            raise ConfigError(f"benign_limit must be >= 1 (rows) or null (every row), got {self.benign_limit}")
        for eps in (*self.pgd_image.eps, *self.universal_image.eps):
            parse_eps(eps)
        for item in self.transfer_from:
            transfer_source(item)
        for spec in self.attacks:
            attack_threat(spec)  # unknown threats and bad settings fail here, before any output
        if any(float(e) <= 0 for e in self.latent.eps):
            raise ConfigError("latent.eps must be > 0 (fractions of the median token norm)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalConfig:
        raw = dict(raw)
        kw = {name: build(sec, raw.pop(name, None), name) for name, sec in cls.SECTIONS.items()}
        if isinstance(raw.get("tasks"), str):
            raw["tasks"] = tuple(t.strip() for t in raw["tasks"].split(",") if t.strip())
        if isinstance(raw.get("judges"), str):
            raw["judges"] = tuple(j.strip() for j in raw["judges"].split(",") if j.strip())
        return build(cls, {**raw, **kw}, "eval")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
