"""Sharded evaluation: the processes of ``accelerate launch`` / ``torchrun`` split a subtask's batches.

The unit of work is a batch of ``eval.batch_size`` behaviours, cut from the subtask's rows the same way
whatever the number of processes, and attacked with the same seeds as in one process. So a behaviour's
result does not depend on how many processes ran: the same seed is not enough, since fp32 forwards of
a behaviour differ by ~1e-7 with the other rows of its batch (their padding; measured on the organism),
which sign-PGD turns into another trajectory. The j-th batch with work left goes to process j mod N:
a subtask of fewer batches than processes leaves some idle (lower ``eval.batch_size``; a warning says so).

Each process appends its records to its own ``samples_<task>.jsonl.rank<r>``; after each subtask the main
process moves them into ``samples_<task>.jsonl`` in row order (the file one process would have written)
and the others wait. A killed run leaves its part files behind: the next start (any number of processes)
merges them first, so resume stays per behaviour. Only the main process writes results, reports and the
folder's marker; it runs the start-up checks first and the others follow once it has claimed the folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..utils.errors import UserError
from .store import SampleStore

T = TypeVar("T")
PART = ".rank"  # samples_<task>.jsonl.rank<r>: not a *.jsonl file, so nothing mistakes it for results


class PeerFailed(UserError):
    """The main process refused to start (it printed why); the other processes stop with it."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the evaluation: ``rank`` of ``size``, and the device it evaluates on."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @classmethod
    def current(cls) -> Shard:
        """One process unless launched by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1); then the
        process group comes from accelerate (gloo on CPU, nccl on GPUs, one GPU per process)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device="cuda" if torch.cuda.is_available() else "cpu")
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, str(state.device))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def from_main(self, value: Any) -> Any:
        """``value`` as the main process has it (every process calls this)."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def lead(self, start: Callable[[], T]) -> T:
        """Run ``start`` on the main process before the others run it (it claims and marks the output
        folder, exports data); a refusal there stops every process instead of leaving them waiting."""
        if self.size == 1:
            return start()
        if self.main:
            try:
                value = start()
            except BaseException as e:
                self.from_main(f"{type(e).__name__}: {e}")
                raise
            self.from_main(None)
            return value
        refused = self.from_main(None)
        if refused:
            raise PeerFailed(f"process 0 of {self.size} refused to start ({refused})")
        return start()

    def mine(self, batches: Sequence[T]) -> list[T]:
        return list(batches[self.rank::self.size])

    def part(self, path: Path) -> Path:
        return path.with_name(f"{path.name}{PART}{self.rank}")


def batches(rows: Sequence[T], size: int, done: Sequence[bool]) -> list[list[T]]:
    """The rows still to do (``done[i]`` False), in the batches one process would cut (``size`` rows of
    the subtask each); batches with nothing left are dropped."""
    cut = [[r for r, d in zip(rows[s: s + size], done[s: s + size]) if not d] for s in range(0, len(rows), size)]
    return [b for b in cut if b]


def merge_parts(path: Path, store: SampleStore, order: dict[tuple[str, int], int] | None = None) -> int:
    """Move every process's ``path.rank<r>`` records into ``store`` (the main file), sorted by ``order``
    ((subtask, doc_id) -> position; stable, unknown keys last); returns how many."""
    parts = sorted(path.parent.glob(f"{path.name}{PART}*"))
    records = [r for p in parts for r in SampleStore(p).records]
    if order is not None:
        records.sort(key=lambda r: order.get((r["subtask"], r["doc_id"]), len(order)))
    if records:
        store.append(records)
    for p in parts:
        p.unlink()
    return len(records)


def recover(folder: Path) -> None:
    """Before a (re)start, on the main process: repair every samples file (a line cut by a kill) and merge
    the part files a killed sharded run left, so the processes agree on what is done."""
    mains = {p.with_name(p.name.split(PART)[0]) for p in folder.glob(f"samples_*.jsonl{PART}*")}
    for path in sorted(mains | set(folder.glob("samples_*.jsonl"))):
        merge_parts(path, SampleStore(path))
