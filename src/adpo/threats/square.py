"""Gradient-free threat model: random search in the L-inf ball, Square Attack style (Andriushchenko et al.
2020), as a check for gradient masking.

A defence that only breaks gradients (shattered, vanishing or noisy ones) fools every white-box attack
and none that ignores the gradient. This one proposes, per sample, a random square window of the image
set to ``x0 ± eps`` (one random sign per channel) on top of the best point so far, and keeps the proposal
when the loss drops. The window's share of the image starts at ``p_init`` and halves on Square's
schedule. An evaluation suite runs it after the white-box attacks: a behaviour it jailbreaks that they
missed is a sign of masking, reported as such (docs/evaluation.md).

Example::

    threat = RandomSearch(eps="16/255", steps=500)
    result = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .image import ImagePGD, ImageState, project
from .protocol import AttackContext

# Square's halvings of the window share (its schedule for 10,000 queries, in absolute queries here, so that a
# longer search extends a shorter one and the half-budget ASR is exact)
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass
class SearchState(ImageState):
    accepted: torch.Tensor | None = None  # the best point so far, per sample
    best_loss: torch.Tensor | None = None
    generator: torch.Generator | None = None
    k: int = 0
    sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RandomSearch(ImagePGD):
    """Square-style random search (L-inf only; ``steps`` = queries after the first; ``step_size`` unused)."""

    needs_grad: ClassVar[bool] = False
    trainable: ClassVar[bool] = False  # an evaluation check, not a training adversary
    p_init: float = 0.1
    keep_best: bool = True  # the accepted point is the best one

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "linf" or not 0 < self.p_init <= 1:
            raise ValueError("RandomSearch is an L-inf attack with 0 < p_init <= 1")

    def init(self, ctx: AttackContext) -> SearchState:
        x0 = self.clean_images(ctx)
        g = ctx.generator
        # Square's start: vertical stripes of ±eps, one sign per column and channel
        signs = torch.randint(0, 2, (x0.shape[0], x0.shape[1], 1, x0.shape[3]), generator=g).to(x0) * 2 - 1
        x = project(x0 + min(self.eps, 1.0) * signs, x0, self.eps) if self.random_start else x0.clone()
        area = x0.shape[-1] * x0.shape[-2]
        sizes = []
        for i in range(self.steps + 1):
            p = self.p_init / 2 ** sum(i > s for s in SCHEDULE)
            sizes.append(max(1, min(x0.shape[-1], round((p * area) ** 0.5))))
        return SearchState(x, x0, ctx.codec_kw, generator=g, sizes=sizes)

    def leaves(self, state: SearchState) -> list[torch.Tensor]:
        return [state.x]

    def step(self, state: SearchState, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
        loss = loss.detach()
        if state.best_loss is None:
            state.accepted, state.best_loss = state.x.clone(), loss.clone()
        else:
            better = loss < state.best_loss
            state.accepted[better] = state.x[better]
            state.best_loss = torch.where(better, loss, state.best_loss)
        b, c, h, w = state.x.shape
        s = state.sizes[min(state.k, len(state.sizes) - 1)]
        state.k += 1
        g = state.generator
        top = torch.randint(0, h - s + 1, (b,), generator=g)
        left = torch.randint(0, w - s + 1, (b,), generator=g)
        signs = (torch.randint(0, 2, (b, c), generator=g) * 2 - 1).to(state.x)
        proposal = state.accepted.clone()
        eps = min(self.eps, 1.0)
        for i in range(b):
            window = (slice(None), slice(int(top[i]), int(top[i]) + s), slice(int(left[i]), int(left[i]) + s))
            proposal[i][window] = state.x0[i][window] + eps * signs[i][:, None, None]
        state.x = self.project(state, [proposal])[0]
