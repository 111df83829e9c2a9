"""Pixel codecs: map between [0,1] pixel space (after resize/crop) and the model's ``pixel_values``.

Attacks live in [0,1] pixel space *before* normalisation (the space where an L-inf ball of 16/255 means
what it says), so every family needs a differentiable ``encode`` that equals its processor's output.
The statistics are read from the processor, never hard-coded (docs/method.md §8, bug B9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ElementwiseCodec:
    """LLaVA-1.5 style: ``pixel_values = (x01 - mean) / std`` per channel, shape (B, C, H, W) or with crops
    (B, N, C, H, W) as LLaVA-NeXT makes them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra_keys = ()  # batch tensors encode/decode also need (see codec_inputs)

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


@dataclass(frozen=True)
class PaddedCropCodec(ElementwiseCodec):
    """Idefics3 / SmolVLM: crops (B, N, C, H, W) padded to the batch's largest N with all-zero crops, which the
    model drops *because* they are exactly zero. ``encode`` keeps every pixel that ``pixel_attention_mask``
    marks as padding at zero, as the processor makes it: a perturbation can never turn a padding crop into
    an image the prompt has no tokens for, nor reach padded pixels of a partly valid patch."""

    extra_keys = ("pixel_attention_mask",)

    def encode(self, x01: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().encode(x01)
        if pixel_attention_mask is None:
            return out
        return out * pixel_attention_mask.to(out.dtype).unsqueeze(-3)  # (B, N, 1, H, W) over channels

    def decode(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().decode(pixel_values)


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


@dataclass(frozen=True)
class QwenPatchCodec:
    """Qwen2-VL / Qwen2.5-VL: ``pixel_values`` are normalised, patchified rows (sum of gh*gw, C*T*P*P)
    with T identical temporal copies of each patch (``image_grid_thw`` gives each image's grid).

    ``decode`` returns (B, C, H, W) in [0,1] (images of one batch must share a grid: per-sample balls need
    a per-sample tensor); ``encode`` is the differentiable inverse and equals the processor's output.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    extra_keys = ("image_grid_thw",)

    @classmethod
    def from_processor(cls, processor) -> QwenPatchCodec:
        ip = getattr(processor, "image_processor", processor)
        base = ElementwiseCodec.from_processor(ip)
        return cls(base.mean, base.std, int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size))

    def _grid(self, image_grid_thw: torch.Tensor) -> tuple[int, int, int]:
        grids = {tuple(int(v) for v in g) for g in image_grid_thw}
        if len(grids) != 1:
            raise ValueError(f"images in one batch have different patch grids {sorted(grids)}: image attacks "
                             "need one pixel tensor per batch; resize the images to one size (train.image_size / "
                             "image_size=N in adpo eval) or use batch_size 1")
        t, gh, gw = grids.pop()
        if t != 1:
            raise ValueError("video inputs (t > 1) are not supported by the image codec")
        return len(image_grid_thw), gh, gw

    def decode(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        n, gh, gw = self._grid(image_grid_thw)
        P, M, T, C = self.patch_size, self.merge_size, self.temporal_patch_size, len(self.mean)
        y = pixel_values.reshape(n, gh // M, gw // M, M, M, C, T, P, P)[:, :, :, :, :, :, 0]
        x = y.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(n, C, gh * P, gw * P)
        return ElementwiseCodec(self.mean, self.std).decode(x)

    def encode(self, x01: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        n, C, H, W = x01.shape
        P, M, T = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = H // P, W // P
        x = ElementwiseCodec(self.mean, self.std).encode(x01)
        x = x.reshape(n, C, gh // M, M, P, gw // M, M, P).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(*x.shape[:6], T, P, P)
        return x.reshape(n * gh * gw, C * T * P * P)


def codec_for(processor) -> ElementwiseCodec | QwenPatchCodec:
    """The codec of a processor's family, read from its image processor: patchified for Qwen2/2.5-VL,
    zero-padded crops for Idefics3/SmolVLM (its outputs include ``pixel_attention_mask``), element-wise
    otherwise (LLaVA-1.5 4-D, LLaVA-NeXT 5-D crops, PaliGemma 4-D)."""
    ip = getattr(processor, "image_processor", processor)
    if hasattr(ip, "merge_size") and hasattr(ip, "temporal_patch_size"):
        return QwenPatchCodec.from_processor(ip)
    if "pixel_attention_mask" in getattr(ip, "model_input_names", ()):
        base = ElementwiseCodec.from_processor(ip)
        return PaddedCropCodec(base.mean, base.std)
    return ElementwiseCodec.from_processor(ip)


def codec_inputs(codec, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch tensors ``codec.encode`` / ``decode`` take besides the pixels (Qwen's grid, Idefics3's mask)."""
    return {k: batch[k] for k in codec.extra_keys if k in batch}
