"""Pixel codecs: map between [0,1] pixel space (after resize/crop) and the model's ``pixel_values``.

Attacks live in [0,1] pixel space *before* normalisation (the space where an L-inf ball of 16/255 means
what it says), so every family needs a differentiable ``encode`` that equals its processor's output.
The statistics are read from the processor, never hard-coded (official-code bug B9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ElementwiseCodec:
    """LLaVA-1.5 style: ``pixel_values = (x01 - mean) / std`` per channel, shape (B, C, H, W)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, processor) -> ElementwiseCodec:
        ip = getattr(processor, "image_processor", processor)
        mean, std = ip.image_mean, ip.image_std
        if isinstance(mean, (int, float)):
            mean, std = [mean] * 3, [std] * 3
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1,) * (x.dim() - 3) + (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def decode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(pixel_values)
        return pixel_values * std + mean


def unit_images(processor, images: Sequence[Any]) -> torch.Tensor:
    """The processor's resized/cropped images in [0,1], not normalised: the attack space."""
    ip = getattr(processor, "image_processor", processor)
    out = ip(list(images), do_normalize=False, return_tensors="pt")["pixel_values"]
    return out.float()


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 arrays already at the processor's crop size -> (N, C, H, W) in [0,1].

    For the organism (images are generated at the crop size) this equals :func:`unit_images`
    (tested), and it is ~100x faster for bulk pre-training data.
    """
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
