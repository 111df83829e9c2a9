"""One writer per output folder: a lock file beside the folder, naming the process that holds it.

``hold(folder, command)`` takes ``<parent>/.<name>.lock``: an exclusive ``flock`` on it (released by the
operating system when the holder dies, however it dies) and, inside it, the holder's pid, host, command
and start time, so a refusal can say who is writing. The lock lives *beside* the folder, so it can be
taken before the folder exists (a refused or failed start leaves the folder untouched) and it survives
commands that replace their folder whole (``adpo organism export``).

A lock file left by a process that no longer runs (``kill -9``, a crash, a lost machine) is taken over
with a message. Holding is re-entrant within one process (``adpo eval`` locks its folder, then evaluates
its one model into that same folder).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import NotWritable, UserError


class OutputLocked(UserError):
    """Another live process is writing the same output folder."""


@dataclass
class Held:
    """A lock this process holds: its file descriptor, how many nested ``hold`` calls share it, and the
    record of a dead holder it replaced (``None`` when the lock was free). ``restore``: put that record
    back on release (the caller refused the folder, so the dead holder's traces are still unexplained)."""

    path: Path
    fd: int
    depth: int
    replaced: dict | None
    restore: bool = False


_HELD: dict[Path, Held] = {}


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _record(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(rec: dict) -> str:
    since = rec.get("since")
    when = time.strftime(", since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
    return f"{rec.get('command', 'an adpo command')} (pid {rec.get('pid', '?')} on {rec.get('host', '?')}{when})"


def _acquire(folder: Path, command: str) -> Held:
    path = lock_path(folder)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise NotWritable(f"output folder {folder} is not writable: cannot create its lock {path} "
                              f"({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(f"{folder} is being written by {_describe(_record(path))}; "
                               "wait for it to finish or choose another --out") from None
        try:  # the holder we waited for may have removed the file: then lock the one that exists now
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _record(path)
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()})
    os.ftruncate(fd, 0)
    os.write(fd, mine.encode())
    return Held(path, fd, 1, previous or None)


@contextmanager
def hold(folder: Path, command: str, log: Callable[[str], None] | None = None) -> Iterator[Held]:
    """Hold the lock of ``folder`` for ``command`` (re-entrant in this process); refuse with
    :class:`OutputLocked` while another live process holds it."""
    path = lock_path(folder)
    held = _HELD.get(path)
    if held is not None:
        held.depth += 1
    else:
        held = _HELD[path] = _acquire(Path(folder), command)
        if held.replaced:
            (log or (lambda m: print(m, file=sys.stderr)))(
                f"adpo: taking over the lock of {Path(folder)} left by {_describe(held.replaced)}, "
                "which is no longer running")
    try:
        yield held
    finally:
        held.depth -= 1
        if held.depth == 0:
            del _HELD[path]
            if held.restore and held.replaced:
                os.ftruncate(held.fd, 0)
                os.pwrite(held.fd, json.dumps(held.replaced).encode(), 0)
            else:
                path.unlink(missing_ok=True)  # unlinked while still locked, so nobody can lock the old file
            os.close(held.fd)
