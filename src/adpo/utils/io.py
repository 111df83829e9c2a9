"""Atomic writes: nothing already written is lost or half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or fail with one clear error naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise PermissionError(f"output folder {path} is not writable: {e.strerror or e}") from e
    return path


def write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename over ``path``."""
    atomic_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
