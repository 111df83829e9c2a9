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
from dataclasses import dataclass, field
from typing import Any

from ..data.templates import MODEL, TEMPLATES
from ..threats.budget import parse_eps
from ..threats.image import ImagePGD
from ..threats.latent import LatentPGD
from ..threats.universal import UniversalImagePGD
from ..utils.config import ConfigError, build
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
    harmful: str | None = None  # preference pairs: prompt, image, chosen = refusal, rejected = target
    utility: str | None = None  # SFT rows: prompt, image, the exact answer
    benign: str | None = None  # SFT rows: benign look-alike requests (over-refusal)
    universal_train: str | None = None  # pairs the universal image is optimised on (disjoint from harmful)
    figstep: str | None = None  # SafeBench-style CSV/JSONL with ``instruction``; default: the harmful prompts


@dataclass(frozen=True)
class PGDImageConfig:
    eps: tuple = ("4/255", "8/255", "16/255", "32/255", "64/255", "inf")  # on the behaviour's own image
    steps: int = ImagePGD.steps
    step_frac: float = 0.1  # step size = max(min_step, step_frac * eps)
    min_step: float = 1 / 255
    random_start: bool = ImagePGD.random_start
    blank: bool = True  # HarmBench MMPGDBlank: a grey image, unconstrained
    noise: bool = False  # a uniform-noise image, unconstrained
    blank_steps: int = 300
    blank_step_size: float = ImagePGD.step_size

    def step_size(self, eps: float) -> float:
        return self.blank_step_size if eps >= 1 else max(self.min_step, self.step_frac * eps)


@dataclass(frozen=True)
class UniversalConfig:
    eps: tuple = ("16/255",)  # one shared delta added to every held-out image
    blank: bool = True  # plus one unconstrained image replacing every held-out image (Qi et al.)
    steps: int = 200
    step_size: float = UniversalImagePGD.step_size
    train_n: int = 32  # training behaviours the image is optimised on


@dataclass(frozen=True)
class LatentConfig:
    eps: tuple = (0.1, 0.25, 0.5, 1.0)  # x the layer's median clean token norm (relative budgets)
    layers: tuple = LatentPGD.layers
    steps: int = 50
    step_size: float = LatentPGD.step_size
    optimizer: str = LatentPGD.optimizer


@dataclass(frozen=True)
class FigStepConfig:
    prompt: str = figstep.PROMPT
    size: int = 760
    font_size: int = 80
    font: str | None = None


@dataclass(frozen=True)
class UtilityConfig:
    scorer: str = "exact"  # or "module:function" taking (response, answer) -> bool | float


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple = ("clean", "pgd-image", "latent", "figstep", "utility", "over-refusal")
    seed: int = 0
    limit: int | None = 64  # behaviours (rows) per task; None = all
    # rows of the utility and over-refusal tasks (generation only, so cheap): more than ``limit`` because their
    # targets are a few points wide (256 rows: a 95% interval of about ±3.5 points at 90%); None = all
    benign_limit: int | None = 256
    batch_size: int = 64
    max_new_tokens: int = 32
    judges: tuple | None = None  # default: organism + gcg13 + llm_attacks29 on organism data, else the lists
    judge_llm: str | None = None  # the llm judge's local folder or OpenAI-compatible URL
    judge_llm_model: str = "judge"
    check_every: int = 10  # generate from the attack's iterate every N steps (success at any checkpoint)
    suite: str = "strong"  # attacks per subtask, worst case per behaviour (adpo.eval.suites): strong | standard
    restarts: int = 1  # attack attempts (fresh random starts) for behaviours not yet jailbroken
    dtype: str | None = None  # model dtype (float32, bfloat16); None = as saved
    logps_chunk: int | None = None  # response tokens per log-prob chunk; 0: full logits; None: auto (vocab >= 32k)
    image_size: int | None = None  # resize images to N×N first (Qwen2-VL: one patch grid per attacked batch)
    template: str | None = None  # prompt template: model | llava | vicuna; None: the one the adapter was trained with
    # the "attacks" task: any registered threat model (adpo.threats.registry) by name, with its settings, e.g.
    # [{threat: image, name: l2@1.0, norm: l2, eps: 1.0, step_size: 0.1, steps: 100}]
    attacks: tuple = ()
    # transfer attacks: models (LABEL=PATH, PATH an adapter / run folder / model folder, or LABEL=base) whose
    # white-box image attacks are applied unchanged to the evaluated model, after its own suite
    transfer_from: tuple = ()
    data: DataConfig = field(default_factory=DataConfig)
    pgd_image: PGDImageConfig = field(default_factory=PGDImageConfig)
    universal_image: UniversalConfig = field(default_factory=UniversalConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    figstep: FigStepConfig = field(default_factory=FigStepConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)

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
