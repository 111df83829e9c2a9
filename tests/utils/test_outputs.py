"""Output folders: nothing of anyone else's is overwritten, a failed start leaves nothing, one writer at a
time (a stale lock is taken over), temp folders of killed writers are cleaned, a full disk says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adpo.utils import io
from adpo.utils.io import (
    OUTPUT_MARKER,
    OutOfSpace,
    OutputExists,
    atomic_dir,
    output_folder,
    read_marker,
    remove_stale_temps,
    space_guard,
)
from adpo.utils.lock import OutputLocked, lock_path


def test_foreign_folder_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists) as e, output_folder(out, "adpo train"):
        pass
    assert str(e.value) == (f"{out} is not empty and was not written by adpo train; choose a new or empty --out "
                            "(adpo never deletes or overwrites what it did not write)")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not lock_path(out).exists()


def test_own_output_is_reused_and_another_commands_refused(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "adpo eval") as o:
        o.begin(model="m")
    assert read_marker(out)["made_by"] == "adpo eval" and read_marker(out)["model"] == "m"
    with output_folder(out, "adpo eval") as o:
        o.begin(adapter="a")
    assert read_marker(out)["model"] == "m" and read_marker(out)["adapter"] == "a"  # merged, not replaced
    with pytest.raises(OutputExists, match="holds the output of adpo eval"), output_folder(out, "adpo train"):
        pass
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("method: dpo\n")  # a run folder from before output markers
    with output_folder(legacy, "adpo train", legacy=("config.yaml",)):
        pass


def test_failed_start_leaves_nothing_and_a_started_run_keeps_its_files(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), output_folder(out, "adpo eval") as o:
        (out / "organism-data").mkdir(parents=True)  # written while loading inputs
        raise ValueError("the model does not load")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()  # an empty folder the user made stays, emptied of what the failed start wrote
    with pytest.raises(ValueError), output_folder(out, "adpo eval"):
        (out / "x").write_text("")
        raise ValueError
    assert out.is_dir() and list(out.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), output_folder(out, "adpo eval") as o:
        o.begin()
        (out / "samples.jsonl").write_text("{}\n")
        raise KeyboardInterrupt
    assert (out / "samples.jsonl").exists() and (out / OUTPUT_MARKER).exists()  # resumable


def test_nested_claims_of_one_folder_share_it(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "adpo eval") as outer, output_folder(out, "adpo eval") as inner:
        assert inner is outer and lock_path(out).exists()
    assert not lock_path(out).exists()


HOLDER = """
import sys, time
from pathlib import Path
from adpo.utils.lock import hold
with hold(Path(sys.argv[1]), "adpo eval"):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_one_writer_per_folder_and_a_dead_writers_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(OutputLocked) as e, output_folder(out, "adpo eval"):
            pass
        assert str(e.value).startswith(f"{out} is being written by adpo eval (pid {child.pid} on ")
        assert str(e.value).endswith("; wait for it to finish or choose another --out")
    finally:
        child.kill()
        child.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == child.pid  # kill -9 left its lock file
    with output_folder(out, "adpo eval"):
        pass
    err = capsys.readouterr().err
    assert f"taking over the lock of {out} left by adpo eval (pid {child.pid}" in err and "no longer running" in err


def test_a_start_killed_before_its_marker_does_not_block_the_same_command(tmp_path):
    out = tmp_path / "out"
    (out / "organism-data").mkdir(parents=True)  # what a killed `adpo eval` wrote before its marker
    lock_path(out).write_text(json.dumps({"pid": 2**22 + 1, "host": "h", "command": "adpo eval"}))
    with pytest.raises(OutputExists), output_folder(out, "adpo train"):
        pass
    with output_folder(out, "adpo eval") as o:
        o.begin()


def test_atomic_dir_replaces_only_its_own_output(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights.bin").write_text("someone else's")
    with pytest.raises(OutputExists, match="not an earlier output of adpo"), atomic_dir(target, own=("done",)):
        pass
    assert (target / "weights.bin").read_text() == "someone else's"
    (target / "done").write_text("")
    with atomic_dir(target, own=("done",)) as tmp:
        (tmp / "done").write_text("new")
    assert [p.name for p in target.iterdir()] == ["done"] and (target / "done").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_temp_folders_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = io._temp_suffix().split("-")[0]  # ".<host>"
    stale = tmp_path / f".step-000003.abc{host}-{dead}.tmp"
    live = tmp_path / f".step-000006.abc{io._temp_suffix()}"
    for p in (stale, live):
        (p / "adapter").mkdir(parents=True)
    with atomic_dir(tmp_path / "step-000009", own=("state.json",)) as tmp:
        (tmp / "state.json").write_text("{}")
    assert not stale.exists() and live.exists()  # a live writer's temp is never touched
    assert remove_stale_temps(tmp_path) == []


def test_a_full_disk_says_so(tmp_path, monkeypatch):
    enforce = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(io, "free_bytes", lambda path: 3 * 2**20)
    target = tmp_path / "step-000002"
    with pytest.raises(OutOfSpace) as e, atomic_dir(target, own=("state.json",)):
        raise enforce
    assert str(e.value).startswith(f"no space left on the disk holding {target} (3 MiB free) while writing it;")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutOfSpace), space_guard(tmp_path):
        raise OSError(28, os.strerror(28))
    monkeypatch.setattr(io, "free_bytes", lambda path: 50 * 2**30)
    with pytest.raises(RuntimeError, match="enforce fail"), space_guard(tmp_path):  # not the disk: unchanged
        raise enforce
