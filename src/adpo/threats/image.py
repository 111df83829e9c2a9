"""Image-space threat model: PGD in [0,1] pixel space (after resize/crop, before normalisation).

The ball is L-inf or L2 around the clean image, intersected with [0,1]^n; ``eps >= 1`` (or ``"inf"``) is
the unconstrained attack of HarmBench's MMPGDBlank (clip to [0,1] only). The projection is the correct one
(docs/method.md, bug B1 wrote the clamped *delta* back as the image)::

    x = clip(x0 + clip(x - x0, -eps, eps), 0, 1)

The model sees ``codec.encode(x)``: the processor's normalisation (and, per family, patching or crops),
read from the processor (:mod:`adpo.threats.codecs`), so the attack never hard-codes a family's numbers.

Shapes: ``inputs['pixel_values']`` as the processor made it; ``x`` (B, C, H, W) in [0,1].

Example (torchattacks' vocabulary)::

    threat = ImagePGD(eps="16/255", step_size="2/255", steps=100, random_start=True)
    result = threat.run(model, batch, targeted_nll(batch), codec=codec_for(processor))
    result.pixel_values     # adversarial pixel_values, ready for the model
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..utils.config import option
from .budget import parse_eps
from .protocol import AttackContext, AttackResult, Threat
from .rules import RULES, Rule, make_rule


def project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project ``x`` onto {x : ||x - x0|| <= eps} ∩ [0,1]^n, per sample (first axis)."""
    return (x0 + project_delta(x - x0, eps, norm)).clamp(0, 1)


def project_delta(delta: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project a perturbation onto its ball, per sample (first axis); eps >= 1 in L-inf leaves it free."""
    if norm == "linf":
        return delta.clamp(-eps, eps) if eps < 1 else delta
    flat = delta.flatten(1)
    scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * scale[:, None]).view_as(delta)


def start_point(x0: torch.Tensor, cfg: ImagePGD, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x0``, or a uniform random point of the ball around it when ``cfg.random_start``."""
    if not cfg.random_start:
        return x0.clone()
    noise = torch.rand(x0.shape, generator=generator).to(x0) * 2 - 1
    if cfg.norm == "linf":
        return project(x0 + min(cfg.eps, 1.0) * noise, x0, cfg.eps, "linf")
    scale = cfg.eps / noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    return project(x0 + noise * scale.view(-1, *[1] * (x0.dim() - 1)), x0, cfg.eps, "l2")


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-descent direction of the norm's unit ball: the gradient's sign (L-inf) or its direction
    per sample (L2)."""
    if norm == "linf":
        return grad.sign()
    g = grad.flatten(1)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return g.view_as(grad)


@dataclass
class ImageState:
    x: torch.Tensor  # the variable: the image itself (a shared delta for the universal threat)
    x0: torch.Tensor  # the clean images in [0,1]
    codec_kw: dict[str, torch.Tensor]
    rule: Rule | None = None


@dataclass(frozen=True)
class ImagePGD(Threat):
    """PGD settings, torchattacks' vocabulary; budgets in the one vocabulary (``"16/255"``, 0.0627, ``"inf"``).

    ``eps`` and ``step_size`` are in [0,1] pixel units. ``keep_best`` returns, per sample, the iterate
    with the lowest loss seen (the final iterate is evaluated too). ``optimizer``: the step rule
    (:mod:`adpo.threats.rules`: ``sign`` = PGD, ``adam``, ``sign-adam``, ``apgd``; Auto-PGD's step starts
    at 2·eps, at 2·0.5 for the unconstrained L-inf attack, and ignores ``step_size``).
    """

    kind: ClassVar[str] = "image"
    needs_codec: ClassVar[bool] = True

    eps: float = option(16 / 255, "budget in [0,1] pixel units: 16/255, 0.0627 or inf (clip to [0,1] only)")
    step_size: float = option(2 / 255, "step in pixel units (ignored by apgd)")
    steps: int = option(100, "attack steps")
    random_start: bool = option(True, "start from a uniform random point of the ball")
    norm: str = option("linf", "the ball's norm: linf | l2")
    keep_best: bool = option(False, "return, per sample, the lowest-loss iterate")
    optimizer: str = option("sign", "step rule: sign (PGD) | adam | sign-adam | apgd")

    # The training adversary of the official code (docs/method.md §2.2), its projection fixed: what
    # ``adpo train`` uses for every field a config leaves unset. L-inf 0.2, step 0.0125, 30 steps, no
    # random start, keep the lowest-loss iterate.
    training_defaults: ClassVar[dict[str, Any]] = {"eps": 0.2, "step_size": 0.0125, "steps": 30,
                                                    "random_start": False, "keep_best": True}

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", parse_eps(self.eps))
        object.__setattr__(self, "step_size", parse_eps(self.step_size))
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.optimizer not in RULES:
            raise ValueError(f"optimizer must be one of {list(RULES)}, got {self.optimizer!r}")
        if self.steps < 0:
            raise ValueError("steps must be >= 0")

    def clean_images(self, ctx: AttackContext) -> torch.Tensor:
        x0 = ctx.codec.decode(ctx.inputs["pixel_values"].float(), **ctx.codec_kw).clamp(0, 1).detach()
        ctx.clean["pixel_values"] = ctx.codec.encode(x0, **ctx.codec_kw)
        return x0

    def init(self, ctx: AttackContext) -> ImageState:
        x0 = self.clean_images(ctx)
        x = start_point(x0, self, ctx.generator)
        for i, w in enumerate(ctx.warm.get("image", ())):  # persistent perturbations: the sample's last image
            if w is not None:
                x[i] = project(w.to(x0)[None], x0[i:i + 1], self.eps, self.norm)[0]
        return self.with_rule(ImageState(x, x0, ctx.codec_kw))

    def with_rule(self, state: ImageState) -> ImageState:
        """``state`` with its step rule, for a run of ``self.steps`` steps from its start point."""
        radius = min(self.eps, 0.5) if self.norm == "linf" else self.eps
        state.rule = make_rule(self.optimizer, leaves=[state.x], step_size=self.step_size, scales=[radius],
                               steps=self.steps)
        return state

    def image_of(self, state: ImageState) -> torch.Tensor:
        """The images the model sees for the current variable."""
        return state.x

    def variables(self, state: ImageState) -> dict[str, torch.Tensor]:
        return {"image": state.x}

    def load(self, state: ImageState, variables: dict[str, torch.Tensor]) -> None:
        state.x = variables["image"]

    def apply(self, ctx: AttackContext, state: ImageState) -> AbstractContextManager[dict[str, torch.Tensor]]:
        return nullcontext({"pixel_values": ctx.codec.encode(self.image_of(state), **state.codec_kw)})

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return direction(grad, self.norm)

    def step(self, state: ImageState, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
        state.x = state.rule.update([state.x], grads, loss, self.direction, lambda vs: self.project(state, vs))[0]

    def project(self, state: ImageState, variables: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project(variables[0], state.x0, self.eps, self.norm)]

    def snapshot(self, ctx: AttackContext, state: ImageState, overrides: dict[str, torch.Tensor],
                 result: AttackResult) -> None:
        result.x_adv = self.image_of(state).detach()
        result.pixel_values = overrides["pixel_values"].detach()

    def select(self, state: ImageState, keep: torch.Tensor) -> ImageState:
        return ImageState(state.x[keep], state.x0[keep], {k: v[keep] for k, v in state.codec_kw.items()},
                          state.rule)

    def attach(self, ctx: AttackContext, state: ImageState, result: AttackResult) -> None:
        result.pixel_values = ctx.codec.encode(self.image_of(state), **state.codec_kw)

    def finish(self, ctx: AttackContext, state: ImageState, result: AttackResult) -> None:
        x = self.image_of(state).detach()
        d = (x - state.x0).flatten(1)
        result.x_adv = x
        result.pixel_values = ctx.codec.encode(x, **state.codec_kw).detach()
        result.norms.update(image_linf=d.abs().amax(1), image_l2=d.norm(dim=1))
