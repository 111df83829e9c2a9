"""Per-sample JSONL records, appended batch by batch, so an interrupted evaluation resumes where it stopped.

A record is *done* when its (subtask, doc_id, config hash) is in the file: a changed attack setting gives
a new hash, so stale records are never mistaken for current ones (and are left out of the results). A
line cut short by a kill is dropped when the file is reopened (the file is rewritten atomically first).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..utils.io import atomic_text


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class SampleStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            good = []
            for line in lines:
                try:
                    self.records.append(json.loads(line))
                    good.append(line)
                except json.JSONDecodeError:
                    continue  # a half-written line from a killed run
            if len(good) != len(lines):
                atomic_text(self.path, "".join(g + "\n" for g in good))
        self._done = {self.key(r) for r in self.records}

    @staticmethod
    def key(r: dict) -> tuple:
        return r["subtask"], r["doc_id"], r["config_hash"]

    def done(self, subtask: str, doc_id: int, chash: str) -> bool:
        return (subtask, doc_id, chash) in self._done

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records += records
        self._done |= {self.key(r) for r in records}

    def current(self, subtask: str, chash: str, doc_ids: set[int] | None = None) -> list[dict]:
        """The records of one subtask at the current settings (and rows), in doc order (latest copy wins)."""
        out = {r["doc_id"]: r for r in self.records if r["subtask"] == subtask and r["config_hash"] == chash
               and (doc_ids is None or r["doc_id"] in doc_ids)}
        return [out[k] for k in sorted(out)]
