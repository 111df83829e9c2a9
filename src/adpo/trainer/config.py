"""Training options and the six methods of the paper's comparison, each a small declarative spec.

=========  ===========  ====================  ==========================================
method     objective    adversarial policy?   reference (and initial policy)
=========  ===========  ====================  ==========================================
sft        SFT          no                    none
dpo        DPO          no                    the initial model (base, or ``--init``)
at         AT           yes (refusal CE)      none: this *is* the adversarial reference
ar-dpo     DPO          no                    the AT model (``--reference``)
at-dpo     DPO          yes                   the initial model (base, or ``--init``)
adpo       DPO          yes                   the AT model (``--reference``)
=========  ===========  ====================  ==========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..data.templates import MODEL, TEMPLATES
from ..models.adapters import LoraSettings
from ..objectives.preference import LOSS_TYPES
from ..threats import registry
from ..threats.image import ImagePGD
from ..threats.latent import LatentPGD
from ..threats.protocol import Threat
from ..utils.config import ConfigError, build


@dataclass(frozen=True)
class Method:
    objective: str  # "sft" | "dpo" | "at"
    adversarial: bool  # the policy's loss is taken under a fresh worst-case perturbation
    reference: str  # "none" | "init" (initial model) | "at" (an AT run, also the initial policy)
    utility_weight: float  # default weight of the clean utility SFT term


METHODS: dict[str, Method] = {
    "sft": Method("sft", False, "none", 1.0),
    "dpo": Method("dpo", False, "init", 0.0),
    "at": Method("at", True, "none", 30.0),  # α = 30, the official AT script's AT_alpha
    "ar-dpo": Method("dpo", False, "at", 0.0),
    "at-dpo": Method("dpo", True, "init", 0.0),
    "adpo": Method("dpo", True, "at", 0.0),
}


@dataclass(frozen=True)
class TrainConfig:
    """The loop's options. ``steps`` counts optimizer steps; ``epochs`` is used when ``steps`` is 0."""

    steps: int = 0
    epochs: float = 1.0
    batch_size: int = 2  # pairs (or SFT rows) per process per micro-batch
    utility_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # preference loss, in TRL 1.16's names: loss_type [sigmoid, sft] with loss_weights [1, α] adds the SFT
    # term on the chosen answer (TRL's "sft" loss: the token mean; LLaMA-Factory's pref_ftx)
    beta: float = 0.1
    loss_type: str | tuple[str, ...] = "sigmoid"  # sigmoid | ipo | hinge, optionally with sft: [sigmoid, sft]
    loss_weights: tuple[float, ...] | None = None  # one per loss_type entry; None: all 1
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0  # TRL < 1.0's name (dropped by TRL): the same as loss_type [.., sft] weighted rpo_alpha
    utility_weight: float | None = None  # None: the method's default (at: 30, sft: 1, DPO family: 0)
    # where our defaults differ from the official run (docs/training.md, "Official recipe or ours"); None: by
    # fidelity, ours | official (FIDELITY)
    fidelity: str = "ours"
    template: str | None = None  # model (the processor's chat template) | llava | vicuna (LLaMA-Factory's)
    at_stream: str | None = None  # AT batches: paired (pairs + utility rows per step) | mixed (one shuffled stream)
    sft_reduction: str | None = None  # SFT cross-entropy: sequence (row means, then rows) | token (batch token mean)
    policy_init: str | None = None  # ar-dpo/adpo: continue (train the AT adapter on) | merge (fresh LoRA on it)
    at_floor: float | None = None  # the official AT code's 0.5 loss floor (0: off)
    # adversary
    threat: str = "image"  # a trainable threat of adpo.threats.registry: image | latent | joint
    attack_objective: str = "rejected_nll"  # rejected_nll (official code) | dpo_margin
    reference_input: str = "clean"  # clean (official code) | perturbed (for study)
    # bookkeeping
    seed: int = 0
    max_length: int | None = None
    allow_degenerate_pairs: bool = False  # train on pairs whose chosen == rejected (refused by default)
    image_size: int | None = None  # resize images to N×N first (Qwen2-VL: one patch grid per attacked batch)
    log_every: int = 1
    save_every: int = 0  # 0: a checkpoint at the end only
    keep_checkpoints: int = 2
    report_to: str = "none"  # none | tensorboard
    model_dtype: str = "float32"  # base weights; bfloat16 halves memory (trainable LoRA weights stay fp32)
    # memory at scale
    logps_chunk: int | None = None  # response tokens per log-prob chunk; 0: full logits; None: auto (vocab >= 32k)
    gradient_checkpointing: bool = False  # recompute decoder activations in backward (attack hooks included)

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITY:
            raise ValueError(f"fidelity must be one of {list(FIDELITY)}, got {self.fidelity!r}")
        for name, value in FIDELITY[self.fidelity].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_losses()
        checks = {"threat": tuple(registry.trainable()), "attack_objective": ("rejected_nll", "dpo_margin"),
                  "reference_input": ("clean", "perturbed"), "template": (MODEL, *TEMPLATES),
                  "at_stream": ("paired", "mixed"), "sft_reduction": ("sequence", "token"),
                  "policy_init": ("continue", "merge"),
                  "report_to": ("none", "tensorboard"), "model_dtype": ("float32", "bfloat16", "float16")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if min(self.batch_size, self.utility_batch_size, self.grad_accum, self.log_every) < 1:
            raise ValueError("batch_size, utility_batch_size, grad_accum and log_every must be >= 1")
        if self.logps_chunk is not None and self.logps_chunk < 0:
            raise ValueError("logps_chunk must be >= 0 (0: full logits) or null (auto)")
        if self.steps < 0 or self.epochs <= 0 or self.beta <= 0 or self.save_every < 0:
            raise ValueError("steps and save_every must be >= 0, epochs and beta > 0")
        from transformers.trainer_utils import SchedulerType

        known = [t.value for t in SchedulerType]
        if self.scheduler not in known:
            raise ValueError(f"scheduler must be one of {known}, got {self.scheduler!r}")


    def _check_losses(self) -> None:
        types = self.loss_types
        weights = self.loss_weights or (1.0,) * len(types)
        prefs = [t for t in types if t != "sft"]
        if len(prefs) != 1 or prefs[0] not in LOSS_TYPES or len(set(types)) != len(types):
            raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, optionally with 'sft' "
                             f"(e.g. [sigmoid, sft]), got {self.loss_type!r}")
        if len(weights) != len(types):
            raise ValueError(f"loss_weights must have one weight per loss_type entry, got {weights} for {types}")
        if self.rpo_alpha and "sft" in types:
            raise ValueError("rpo_alpha is the old name of loss_type [..., sft] with its weight; give one of them")

    @property
    def loss_types(self) -> tuple[str, ...]:
        return (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)

    @property
    def preference_loss(self) -> tuple[str, float]:
        """(name, weight) of the preference loss."""
        weights = self.loss_weights or (1.0,) * len(self.loss_types)
        return next((t, w) for t, w in zip(self.loss_types, weights) if t != "sft")

    @property
    def sft_weight(self) -> float:
        """Weight of the SFT term on the chosen answer: loss_type's "sft" entry, or the alias rpo_alpha."""
        weights = self.loss_weights or (1.0,) * len(self.loss_types)
        return dict(zip(self.loss_types, weights)).get("sft", self.rpo_alpha)


# The official run's values where our defaults differ (docs/training.md, "Official recipe or ours" says why).
FIDELITY: dict[str, dict[str, Any]] = {
    "ours": {"template": MODEL, "at_stream": "paired", "sft_reduction": "sequence", "policy_init": "continue"},
    "official": {"template": "llava", "at_stream": "mixed", "sft_reduction": "token", "policy_init": "merge",
                 "at_floor": 0.5},
}


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``adpo train`` run resolves to (saved as ``OUT/config.yaml``)."""

    method: str
    model: str
    data: str
    out: str
    utility_data: str | None = None
    reference: str | None = None
    init: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    # every sectioned threat's settings, by registry name (image, latent): its training_defaults + the config
    threats: dict[str, Threat] = field(default_factory=lambda: registry.training_sections({}))

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def utility_weight(self) -> float:
        w = self.train.utility_weight
        return self.spec.utility_weight if w is None else w

    @property
    def image(self) -> ImagePGD:
        return self.threats["image"]  # type: ignore[return-value]

    @property
    def latent(self) -> LatentPGD:
        return self.threats["latent"]  # type: ignore[return-value]

    def threat(self) -> Threat:
        """The adversary of ``train.threat``, built from the resolved threat sections."""
        return registry.training_threat(self.train.threat, self.threats)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("train", "lora", "threats")}
        out.update(train=asdict(self.train), lora=self.lora.to_dict())
        out.update({name: t.to_dict() for name, t in self.threats.items()})
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from a nested mapping (YAML + overrides); unknown keys and bad values are ConfigErrors."""
        raw = dict(raw)
        sections = {"train": TrainConfig, "lora": LoraSettings}
        kw: dict[str, Any] = {k: build(c, raw.pop(k, None), k) for k, c in sections.items()}
        kw["threats"] = registry.training_sections({name: raw.pop(name, None) for name in registry.sectioned()})
        top = {"method", "model", "data", "out", "utility_data", "reference", "init"}
        unknown = sorted(set(raw) - top)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known top-level keys: {sorted(top)} and sections "
                              f"{'/'.join(['train', 'lora', *registry.sectioned()])}")
        for key in ("method", "model", "data", "out"):
            if not raw.get(key):
                raise ConfigError(f"missing required option '{key}' (--{key} or '{key}:' in the config)")
        if raw["method"] not in METHODS:
            raise ConfigError(f"unknown method {raw['method']!r}; known: {list(METHODS)}")
        run = cls(**{k: (str(v) if v is not None else None) for k, v in raw.items()}, **kw)
        run.validate()
        return run

    def validate(self) -> None:
        spec = self.spec
        if spec.reference == "at" and not self.reference:
            raise ConfigError(f"method {self.method} needs --reference: the AT run (adpo train --method at) whose "
                              "model is both the reference and the initial policy")
        if spec.reference != "at" and self.reference:
            hint = {"dpo": "ar-dpo", "at-dpo": "adpo"}.get(self.method)
            raise ConfigError(f"method {self.method} does not take --reference"
                              + (f"; use --method {hint} to train against an AT reference" if hint else ""))
        if self.reference and self.init:
            raise ConfigError("--reference is also the initial policy; do not pass --init with it")
        if self.utility_weight > 0 and not self.utility_data:
            raise ConfigError(f"method {self.method} uses a utility SFT term (weight {self.utility_weight:g}); pass "
                              "--utility-data, or set train.utility_weight=0")
