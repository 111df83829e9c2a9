"""Universal image threat model: one perturbation shared by every image of the batch (VisualAdv / ImgJP).

The variable is a single delta (1, C, H, W) in its own ball; every sample sees ``clip(x0 + delta, 0, 1)``.
``eps >= 1`` optimises one unconstrained image offset (Qi et al.'s universal image, with a grey start).
The result's ``delta`` is what evaluation applies to held-out images.

Example::

    threat = UniversalImagePGD(eps="16/255", step_size="2/255", steps=200)
    result = threat.run(model, train_batch, targeted_nll(train_batch), codec=codec)
    result.delta            # (1, C, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .image import ImagePGD, ImageState, project_delta, start_point
from .protocol import AttackContext, AttackResult


@dataclass(frozen=True)
class UniversalImagePGD(ImagePGD):
    """:class:`~adpo.threats.image.ImagePGD`'s settings for one shared delta (``keep_best`` is undefined)."""

    kind: ClassVar[str] = "image"
    trainable: ClassVar[bool] = False  # an evaluation attack (universal-image task), not a training adversary

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_best:
            raise ValueError("keep_best is per sample and undefined for a universal perturbation")

    def init(self, ctx: AttackContext) -> ImageState:
        x0 = self.clean_images(ctx)
        delta = start_point(torch.full_like(x0[:1], 0.5), self, ctx.generator) - 0.5  # a random point of the ball
        return self.with_rule(ImageState(delta, x0, ctx.codec_kw))

    def image_of(self, state: ImageState) -> torch.Tensor:
        return (state.x0 + state.x).clamp(0, 1)

    def project(self, state: ImageState, variables: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project_delta(variables[0], self.eps, self.norm)]

    def finish(self, ctx: AttackContext, state: ImageState, result: AttackResult) -> None:
        result.delta = state.x.detach()
        super().finish(ctx, state, result)
