"""Output folders and atomic writes: nothing a user had is deleted or overwritten, nothing is left
half-written, and a full disk says so.

* :func:`output_folder` claims a command's output folder: one writer (:mod:`adpo.utils.lock`); a folder
  that is neither new, empty, nor this command's own earlier output is refused before anything is
  written; ``Output.begin`` writes the marker saying what made the folder once inputs and models have
  loaded; a start that fails before that point removes what it wrote, so it never blocks a rerun.
* :func:`atomic_dir` writes a folder beside its target and swaps it in, replacing only the writer's own
  earlier output (a folder holding the writer's completion file); temp folders of writers killed
  mid-write are removed by the next writer in the same place.
* :func:`write_json` / :func:`atomic_text` replace a file by rename, so it is old or new, never cut.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NotWritable, UserError
from .lock import hold

OUTPUT_MARKER = "adpo_output.json"  # {"made_by": "adpo eval", ...}: which command made the folder
LOW_SPACE = 100 * 2**20  # below this many free bytes, a failed write is put down to the full disk
_TEMP = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.tmp$")


class OutputExists(UserError):
    """The output folder holds something this command did not write; nothing was changed."""


class OutOfSpace(UserError):
    """A write failed because the disk (or quota) is full."""


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or fail with one clear error naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise NotWritable(f"output folder {path} is not writable: {e.strerror or e}") from e
    return path


# ---- temp names, stale temps and the full disk ----------------------------------------------------

def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_suffix() -> str:
    """``.<host>-<pid>.tmp``: whose temp it is, so a later writer can tell one whose writer died."""
    return f".{_host()}-{os.getpid()}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files and folders that adpo writers on this machine left in ``folder`` when they were
    killed mid-write (their process is gone); returns what was removed."""
    gone = []
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        m = _TEMP.match(p.name)
        if m and m["host"] == _host() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _out_of_space(err: BaseException, path: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc] ... file write failed"
    text = str(err)
    hint = any(s in text for s in ("enforce fail", "write failed", "No space left"))
    return isinstance(err, (OSError, RuntimeError)) and hint and free_bytes(path) < LOW_SPACE


@contextmanager
def space_guard(path: Path) -> Iterator[None]:
    """Writes under ``path``: a failure caused by a full disk becomes :class:`OutOfSpace` naming the place."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not _out_of_space(e, path):
            raise
        raise OutOfSpace(f"no space left on the disk holding {path} ({free_bytes(path) / 2**20:.0f} MiB free) "
                         f"while writing it; free some space and run the command again (what was complete "
                         "before is intact; training continues with --resume)") from e


# ---- atomic files and folders ---------------------------------------------------------------------

def write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename over ``path``."""
    atomic_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_temp_suffix())
    try:
        with space_guard(path), os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_replaceable(path: Path, own: tuple[str, ...]) -> None:
    """Refuse (:class:`OutputExists`) to replace ``path`` unless it is absent, empty, or holds one of the
    files ``own`` names (its writer's own earlier output)."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if path.is_dir() and any((path / name).exists() for name in own):
        return
    raise OutputExists(f"{path} exists and is not an earlier output of adpo (it has none of {list(own)}); "
                       "adpo does not replace it: move it away or choose another output folder")


@contextmanager
def atomic_dir(path: Path, own: tuple[str, ...]) -> Iterator[Path]:
    """Yield a temp folder next to ``path``; on success it replaces ``path``, on error it is removed.

    Only an absent or empty ``path``, or one holding a file named in ``own`` (the writer's earlier
    output), is replaced: anything else is refused before the first byte is written.
    """
    path = Path(path)
    check_replaceable(path, own)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=_temp_suffix()))
    try:
        with space_guard(path):
            yield tmp
        if path.exists():  # set the old one aside first: a kill in between leaves it as a stale temp
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.", suffix=_temp_suffix()))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---- output folders -------------------------------------------------------------------------------

def read_marker(folder: Path) -> dict[str, Any]:
    """The marker of an adpo output folder (``{}`` when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(folder: Path, command: str, **record: Any) -> None:
    """Say in ``folder`` that ``command`` made it (merged with what an earlier run recorded)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        adpo = version("adpo")
    except PackageNotFoundError:
        adpo = "unknown"
    write_json(Path(folder) / OUTPUT_MARKER, {**read_marker(folder), **record, "made_by": command,
                                             "adpo_version": adpo, "written": time.strftime("%Y-%m-%dT%H:%M:%S")})


@dataclass
class Output:
    """An output folder claimed by :func:`output_folder`."""

    path: Path
    command: str
    existed: bool  # the folder was there when claimed
    empty: bool  # ... and held nothing (so everything in it now is this run's)
    writer: bool  # this process locks, marks and cleans (the main process of a distributed run)
    begun: bool = False

    def begin(self, **record: Any) -> None:
        """Inputs and models have loaded: create the folder and write its marker (``record`` adds what the
        command wants to recognise later, e.g. the evaluated model). From here on a failure keeps what was
        written, so the run resumes."""
        if self.writer:
            ensure_writable_dir(self.path)
            write_marker(self.path, self.command, **record)
        self.begun = True

    def undo_start(self) -> None:
        """Remove what a failed start wrote: the folder if this run created it, its contents if it was empty."""
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.empty:
            for p in self.path.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()


_ACTIVE: dict[Path, Output] = {}


def _claim(path: Path, command: str, legacy: tuple[str, ...], stale: dict | None, writer: bool) -> Output:
    if path.exists() and not path.is_dir():
        raise OutputExists(f"{path} is a file, not a folder; choose another --out")
    contents = [p for p in path.iterdir() if not _TEMP.match(p.name)] if path.is_dir() else []
    if contents:
        made_by = read_marker(path).get("made_by")
        ours = made_by == command or (made_by is None and (
            any((path / name).exists() for name in legacy)  # written by a version before markers
            or (stale or {}).get("command") == command))  # this command was killed before its marker
        if not ours:
            what = f"holds the output of {made_by}" if made_by else f"is not empty and was not written by {command}"
            raise OutputExists(f"{path} {what}; choose a new or empty --out (adpo never deletes or overwrites "
                               "what it did not write)")
        if writer:
            ensure_writable_dir(path)
    return Output(path, command, existed=path.exists(), empty=not contents, writer=writer)


@contextmanager
def output_folder(path: Path, command: str, *, legacy: tuple[str, ...] = (), writer: bool = True,
                  log: Callable[[str], None] | None = None) -> Iterator[Output]:
    """Claim ``path`` as the output folder of ``command`` for the body of the ``with``.

    The folder must be new, empty, or an earlier output of the same command (its marker, one of the
    ``legacy`` files earlier versions wrote, or the lock of a killed start of the same command); else
    :class:`OutputExists`, before anything is written. The folder is locked for this process (re-entrant:
    a nested claim of the same folder shares the outer one). If the body fails before ``Output.begin``,
    what this run wrote there is removed. ``writer=False`` (the other ranks of a distributed run) only checks.
    """
    path = Path(path)
    active = _ACTIVE.get(path.absolute())
    if active is not None:
        if active.command != command:
            raise RuntimeError(f"{path} is already claimed by {active.command} in this process")
        yield active
        return
    with hold(path, command, log) if writer else nullcontext() as held:
        try:
            out = _claim(path, command, legacy, held.replaced if held else None, writer)
        except OutputExists:
            if held:
                held.restore = True  # the dead holder's record still explains what is in the folder
            raise
        _ACTIVE[path.absolute()] = out
        try:
            yield out
        except BaseException:
            if writer and not out.begun:
                out.undo_start()
            raise
        finally:
            del _ACTIVE[path.absolute()]
