"""Image-space PGD in [0,1] pixel space (after resize/crop, before normalisation): settings and math.

The loop itself is :func:`adpo.threats.engine.optimise`, shared with the latent and joint threat models,
so training (ADPO's inner maximisation, AT) and evaluation (the white-box attacker) run the same code.
The projection is the correct one (official-code bug B1 wrote the clamped *delta* back as the image):
``x = clip(x0 + clip(x - x0, -eps, eps), 0, 1)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

    from .engine import AttackResult, Objective


@dataclass(frozen=True)
class ImagePGD:
    """PGD settings, torchattacks' vocabulary. ``eps >= 1`` is the unconstrained attack (clip to [0,1] only).

    ``eps`` and ``step_size`` are in [0,1] pixel units (16/255 etc.). ``keep_best`` returns, per sample,
    the iterate with the lowest loss seen (the final iterate is evaluated too).
    """

    eps: float = 16 / 255
    step_size: float = 2 / 255
    steps: int = 100
    random_start: bool = True
    norm: str = "linf"
    keep_best: bool = False
    universal: bool = False  # one delta shared by every sample of the batch (VisualAdv-style)

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.universal and self.keep_best:
            raise ValueError("keep_best is per sample and undefined for a universal perturbation")
        if self.eps <= 0 or self.step_size <= 0 or self.steps < 0:
            raise ValueError("eps and step_size must be > 0 and steps >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, *,
            codec: Any, generator: torch.Generator | None = None) -> AttackResult:
        """The threat models' common call shape (see :mod:`adpo.threats.engine`)."""
        from .engine import optimise  # the engine imports this module's math

        return optimise(model, inputs, objective, image=self, codec=codec, steps=self.steps, generator=generator)


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


def step(x: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x - step_size * grad.sign()
    g = grad.flatten(1)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x - step_size * g.view_as(x)
