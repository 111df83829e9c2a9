"""Evaluation options: one dataclass per task section, YAML + ``section.key=value`` overrides.

Budgets are written as ``"16/255"``, a float in pixel units, or ``"inf"`` (the unconstrained attack, which
only clips to [0, 1]). Defaults are chosen to be *at least* as strong as the shipped training configs
(configs/organism.yaml trains with 5-step attacks; evaluation attacks use 100+ steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..utils.config import ConfigError, build
from . import figstep

TASKS = ("clean", "pgd-image", "universal-image", "latent", "figstep", "utility", "over-refusal")
HARMFUL_TASKS = ("clean", "pgd-image", "universal-image", "latent", "figstep")


def parse_eps(value: Any) -> float:
    """``"16/255"`` -> 0.0627…, ``"inf"`` -> inf; numbers pass through."""
    if isinstance(value, (int, float)):
        eps = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("inf", "unconstrained"):
        eps = float("inf")
    else:
        try:
            eps = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"cannot read budget {value!r}: use 16/255, 0.0627 or inf") from e
    if eps <= 0:
        raise ConfigError(f"budget {value!r} must be > 0")
    return eps


def eps_label(eps: float) -> str:
    """``16/255`` for pixel budgets on the 1/255 grid, ``inf`` for unconstrained, else ``%g``."""
    if eps >= 1:
        return "inf"
    n = eps * 255
    return f"{round(n)}/255" if abs(n - round(n)) < 1e-6 else f"{eps:g}"


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
    steps: int = 100
    step_frac: float = 0.1  # step size = max(min_step, step_frac * eps)
    min_step: float = 1 / 255
    random_start: bool = True
    blank: bool = True  # HarmBench MMPGDBlank: a grey image, unconstrained
    noise: bool = False  # a uniform-noise image, unconstrained
    blank_steps: int = 300
    blank_step_size: float = 2 / 255

    def step_size(self, eps: float) -> float:
        return self.blank_step_size if eps >= 1 else max(self.min_step, self.step_frac * eps)


@dataclass(frozen=True)
class UniversalConfig:
    eps: tuple = ("16/255",)  # one shared delta added to every held-out image
    blank: bool = True  # plus one unconstrained image replacing every held-out image (Qi et al.)
    steps: int = 200
    step_size: float = 2 / 255
    train_n: int = 32  # training behaviours the image is optimised on


@dataclass(frozen=True)
class LatentConfig:
    eps: tuple = (0.1, 0.25, 0.5, 1.0)  # x the layer's median clean token norm (relative budgets)
    layers: tuple = (-2,)
    steps: int = 50
    step_size: float = 0.1
    optimizer: str = "sign"


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
    batch_size: int = 64
    max_new_tokens: int = 32
    judges: tuple | None = None  # default: organism + gcg13 + llm_attacks29 on organism data, else the lists
    judge_llm: str | None = None  # the llm judge's local folder or OpenAI-compatible URL
    judge_llm_model: str = "judge"
    check_every: int = 10  # generate from the attack's iterate every N steps (success at any checkpoint)
    restarts: int = 1  # attack attempts (fresh random starts) for behaviours not yet jailbroken
    dtype: str | None = None  # model dtype (float32, bfloat16); None = as saved
    logps_chunk: int | None = None  # response tokens per log-prob chunk; 0: full logits; None: auto (vocab >= 32k)
    image_size: int | None = None  # resize images to N×N first (Qwen2-VL: one patch grid per attacked batch)
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
        if self.restarts < 1 or self.batch_size < 1 or self.check_every < 0:
            raise ConfigError("restarts and batch_size must be >= 1, check_every >= 0")
        for eps in (*self.pgd_image.eps, *self.universal_image.eps):
            parse_eps(eps)
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
