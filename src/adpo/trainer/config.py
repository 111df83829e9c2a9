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

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..data.templates import MODEL, TEMPLATES
from ..models.adapters import LoraSettings
from ..objectives.preference import LOSS_TYPES
from ..threats import registry
from ..threats.image import ImagePGD
from ..threats.latent import LatentPGD
from ..threats.protocol import Threat
from ..utils.config import ConfigError, build, option

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # accelerate's names; each is an optional extra


def trackers(report_to: str) -> list[str]:
    """``train.report_to`` as accelerate's ``log_with`` list: ``none``, ``all`` or a comma list of names."""
    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return list(TRACKERS)
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; known: none, all, {', '.join(TRACKERS)}")
    return names


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

    steps: int = option(0, "optimizer steps to run; 0: run train.epochs epochs instead")
    epochs: float = option(1.0, "passes over the preference pairs (the pairs and utility rows of a mixed AT stream; "
                                "used when train.steps is 0)")
    batch_size: int = option(2, "pairs (or SFT rows) per process per micro-batch")
    utility_batch_size: int = option(4, "utility SFT rows per process per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(2e-5, "peak learning rate (AdamW)")
    scheduler: str = option("cosine", "learning-rate schedule (transformers SchedulerType: cosine, linear, constant…)")
    warmup_ratio: float = option(0.1, "fraction of the steps spent warming the learning rate up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    # preference loss, in TRL 1.16's names: loss_type [sigmoid, sft] with loss_weights [1, α] adds the SFT
    # term on the chosen answer (TRL's "sft" loss: the token mean; LLaMA-Factory's pref_ftx)
    beta: float = option(0.1, "DPO temperature β")
    loss_type: str | tuple[str, ...] = option("sigmoid", "preference loss: sigmoid (DPO) | ipo | hinge, optionally "
                                                          "with the SFT term on the chosen answer: [sigmoid, sft]")
    loss_weights: tuple[float, ...] | None = option(None, "one weight per loss_type entry; null: all 1")
    label_smoothing: float = option(0.0, "conservative-DPO label smoothing")
    rpo_alpha: float = option(0.0, "TRL < 1.0's name (dropped by TRL) for loss_type [.., sft] weighted rpo_alpha; "
                                   "LLaMA-Factory's pref_ftx")
    utility_weight: float | None = option(None, "weight of the clean utility SFT term; null: the method's "
                                                "default (at: 30, sft: 1, DPO family: 0)")
    # where our defaults differ from the official run (docs/training.md, "Official recipe or ours"); null: by
    # fidelity, ours | official (FIDELITY)
    fidelity: str = option("ours", "ours | official: the authors' run where our defaults differ (docs/training.md)")
    template: str | None = option(None, "prompt template: model (the processor's chat template) | llava | vicuna "
                                        "(LLaMA-Factory's); null: by fidelity")
    at_stream: str | None = option(None, "AT batches: paired (pairs + utility rows per step) | mixed (one shuffled "
                                         "stream); null: by fidelity")
    sft_reduction: str | None = option(None, "SFT cross-entropy: sequence (row means, then rows) | token (batch "
                                             "token mean); null: by fidelity")
    policy_init: str | None = option(None, "ar-dpo/adpo: continue (train the AT adapter on) | merge (fresh LoRA on "
                                           "the merged AT model); null: by fidelity")
    at_floor: float | None = option(None, "the official AT code's 0.5 loss floor (0: off); null: by fidelity")
    # adversary
    threat: str = option("image", "the training adversary: a trainable threat of adpo.threats.registry "
                                  "(image | latent | joint)")
    attack_objective: str = option("rejected_nll", "what the adversary maximises: rejected_nll (official code) "
                                                   "| dpo_margin")
    reference_input: str = option("clean", "the reference's input: clean (official code) | perturbed (for study)")
    # cheaper adversaries (docs/training.md, "Cheaper adversaries"; adpo.trainer.adversary); all off by default
    free_replays: int = option(0, "free adversarial training (Shafahi et al. 2019): replay each batch N times, the "
                                  "perturbation stepping on the input gradient of the policy's own backward (no "
                                  "attack passes); 0: off")
    persistent_perturbations: bool = option(False, "warm-start each pair's attack from its last perturbation, "
                                                   "across steps and epochs (saved in checkpoints)")
    attack_stop_below: float | None = option(None, "per-sample early stop: a pair leaves the attack once its "
                                                   "objective is <= this (rejected_nll: the rejected answer's NLL "
                                                   "in nats; dpo_margin: log p(chosen) - log p(rejected)); null: "
                                                   "never")
    # bookkeeping
    seed: int = option(0, "seed of data order, LoRA init and attacks")
    max_length: int | None = option(None, "truncate prompt + answer to this many tokens (answers are cut); null: "
                                          "no truncation, rows beyond the model's context are refused")
    allow_degenerate_pairs: bool = option(False, "train on pairs whose chosen == rejected (refused by default)")
    image_size: int | None = option(None, "resize images to N×N first (Qwen2-VL: one patch grid per attacked "
                                          "batch)")
    log_every: int = option(1, "log metrics every N optimizer steps (TRL logging_steps)")
    save_every: int = option(0, "checkpoint every N steps; 0: a checkpoint at the end only")
    keep_checkpoints: int = option(2, "newest checkpoints kept (TRL save_total_limit)")
    report_to: str = option("none", "trackers, through accelerate: none | tensorboard | wandb | mlflow | trackio "
                                    "| all, or a comma list")
    model_dtype: str = option("float32", "base weights: float32 | bfloat16 | float16 (trainable LoRA weights "
                                         "stay fp32)")
    # evaluation during training
    eval_every: int = option(0, "every N steps, score --eval-data's held-out pairs clean and under a short "
                                "attack (eval/* and eval_rewards/* metrics); 0: never")
    eval_limit: int = option(32, "held-out pairs scored at each evaluation")
    eval_attack_steps: int = option(10, "steps of the evaluation's quick attack (train.threat, its other "
                                        "settings as in training)")
    keep_best: bool = option(False, "keep the adapter with the best eval/margin_attacked in OUT/best")
    # memory at scale
    logps_chunk: int | None = option(None, "response tokens per log-prob chunk; 0: full logits; null: auto "
                                           "(vocab >= 32k)")
    gradient_checkpointing: bool = option(False, "recompute decoder activations in backward (attack hooks "
                                                 "included)")

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
                  "policy_init": ("continue", "merge"), "model_dtype": ("float32", "bfloat16", "float16")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if min(self.batch_size, self.utility_batch_size, self.grad_accum, self.log_every) < 1:
            raise ValueError("batch_size, utility_batch_size, grad_accum and log_every must be >= 1")
        if self.logps_chunk is not None and self.logps_chunk < 0:
            raise ValueError("logps_chunk must be >= 0 (0: full logits) or null (auto)")
        trackers(self.report_to)  # an unknown name fails here
        if self.eval_every < 0 or self.eval_limit < 1 or self.eval_attack_steps < 0:
            raise ValueError("eval_every and eval_attack_steps must be >= 0, eval_limit >= 1")
        if self.steps < 0 or self.epochs <= 0 or self.beta <= 0 or self.save_every < 0:
            raise ValueError("steps and save_every must be >= 0, epochs and beta > 0")
        if self.free_replays < 0:
            raise ValueError("free_replays must be >= 0 (0: off)")
        if self.free_replays and self.attack_stop_below is not None:
            raise ValueError("attack_stop_below stops the attack's steps; free adversarial training (free_replays) "
                             "runs none: set one of them")
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
    def cheaper_adversary(self) -> bool:
        """Any of the options of adpo.trainer.adversary is on."""
        return bool(self.free_replays or self.persistent_perturbations or self.attack_stop_below is not None)

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

    method: str = option(help="the method: sft | dpo | at | ar-dpo | at-dpo | adpo")
    model: str = option(help="base model: a transformers folder or a hub id")
    data: str = option(help="preference pairs: .jsonl/.json/.parquet, a datasets folder or a hub name")
    out: str = option(help="output folder")
    utility_data: str | None = option(None, "SFT rows of the utility term")
    reference: str | None = option(None, "the AT run (or adapter) of ar-dpo / adpo: reference and initial policy")
    init: str | None = option(None, "adapter the policy starts from (e.g. an SFT run)")
    eval_data: str | None = option(None, "held-out preference pairs scored every train.eval_every steps")
    train: TrainConfig = option(factory=TrainConfig, help="the loop, the preference loss, the adversary's use")
    lora: LoraSettings = option(factory=LoraSettings, help="the adapter (peft)")
    threats: dict[str, Threat] = option(factory=lambda: registry.training_sections({}),
                                        help="every sectioned threat's settings, by registry name (image, latent): "
                                             "its training_defaults under the config's section")

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
    def from_dict(cls, raw: dict[str, Any], complete: bool = True) -> RunConfig:
        """Build from a nested mapping (YAML + overrides); unknown keys and bad values are ConfigErrors.
        ``complete=False`` (``adpo config``) leaves missing paths empty and skips the checks between options."""
        raw = dict(raw)
        sections = {"train": TrainConfig, "lora": LoraSettings}
        kw: dict[str, Any] = {k: build(c, raw.pop(k, None), k) for k, c in sections.items()}
        kw["threats"] = registry.training_sections({name: raw.pop(name, None) for name in registry.sectioned()})
        top = {f.name for f in fields(cls) if f.name not in ("train", "lora", "threats")}
        unknown = sorted(set(raw) - top)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known top-level keys: {sorted(top)} and sections "
                              f"{'/'.join(['train', 'lora', *registry.sectioned()])}")
        for key in ("method", "model", "data", "out"):
            if not complete and key != "method":
                raw.setdefault(key, None)
            elif not raw.get(key):
                raise ConfigError(f"missing required option '{key}' (--{key} or '{key}:' in the config)")
        if raw["method"] not in METHODS:
            raise ConfigError(f"unknown method {raw['method']!r}; known: {list(METHODS)}")
        run = cls(**{k: (str(v) if v is not None else None) for k, v in raw.items()}, **kw)
        if complete:
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
        if self.train.eval_every and not self.eval_data:
            raise ConfigError(f"train.eval_every={self.train.eval_every} needs --eval-data (held-out preference "
                              "pairs), or set train.eval_every=0")
        if self.train.cheaper_adversary and not spec.adversarial:
            raise ConfigError(f"train.free_replays / persistent_perturbations / attack_stop_below change the "
                              f"training adversary; method {self.method} trains without one")
        try:
            self.threat()
        except ValueError as e:
            raise ConfigError(f"train.threat={self.train.threat}: {e}") from e
        if self.utility_weight > 0 and not self.utility_data:
            raise ConfigError(f"method {self.method} uses a utility SFT term (weight {self.utility_weight:g}); pass "
                              "--utility-data, or set train.utility_weight=0")
