"""Deterministic batch streams: batch ``m`` of rank ``r`` is a pure function of (seed, m, r).

That makes resume exact without saving iterator state (the step count is the data position), and it
shards across processes by slicing one global batch, so 2 processes × b rows see the same rows as
1 process × 2b rows (the DDP equivalence test relies on it). Epochs are fresh permutations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .collate import collate_pair_rows, collate_rows
from .formats import PairRow, SFTRow, open_image

IMAGE_CACHE_ROWS = 4096


@dataclass
class BatchStream:
    rows: Sequence[PairRow] | Sequence[SFTRow]
    processor: Any
    batch_size: int  # per process
    seed: int = 0
    max_length: int | None = None
    rank: int = 0
    world_size: int = 1
    image_size: int | None = None  # resize images to a square of this side first (data.formats.open_image)

    def __post_init__(self) -> None:
        self._perms: dict[int, np.ndarray] = {}
        self._images: dict[int, Any] = {}

    def indices(self, m: int) -> list[int]:
        """Row indices of micro-batch ``m`` for this rank."""
        n, b = len(self.rows), self.batch_size
        start = (m * self.world_size + self.rank) * b
        return [int(self._perm(pos // n)[pos % n]) for pos in range(start, start + b)]

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return self._perms[epoch]

    def _image(self, i: int):
        """Decoded images are kept for small datasets (the organism's are re-read every epoch)."""
        if i in self._images:
            return self._images[i]
        image = open_image(self.rows[i].image, self.image_size)
        if len(self.rows) <= IMAGE_CACHE_ROWS:
            self._images[i] = image
        return image

    def batch(self, m: int) -> dict[str, torch.Tensor]:
        idx = self.indices(m)
        return self._collate(idx)

    def _collate(self, idx: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in idx]
        images = [self._image(i) for i in idx]
        if isinstance(rows[0], PairRow):
            return collate_pair_rows(self.processor, images, rows, self.max_length)
        return collate_rows(self.processor, images, rows, self.max_length)

    def parts(self, m: int) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        """(batch, utility batch) of micro-batch ``m``: this stream's batch and no utility rows."""
        return self.batch(m), None

    def epochs(self, micro_batches: int) -> float:
        """Passes over the rows after ``micro_batches`` global micro-batches."""
        return micro_batches * self.batch_size * self.world_size / len(self.rows)


class MixedStream(BatchStream):
    """One shuffled stream over preference pairs and utility SFT rows together, as the official AT stage
    draws its batches (one dataset of 200 harmful + 500 utility rows, batch 4): a micro-batch's pairs and its
    utility rows are collated apart, and either part may be empty (None), so the harmful:utility ratio
    varies from step to step (docs/method.md §8, B12)."""

    def parts(self, m: int) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        idx = self.indices(m)
        pairs = [i for i in idx if isinstance(self.rows[i], PairRow)]
        utility = [i for i in idx if not isinstance(self.rows[i], PairRow)]
        return (self._collate(pairs) if pairs else None), (self._collate(utility) if utility else None)

    def batch(self, m: int) -> dict[str, torch.Tensor]:
        raise TypeError("a mixed stream has two parts per batch; use parts(m)")
