"""A run folder, a dataset or a config is data, never code: no pickle is loaded from one, no module named in
one is imported (except the documented, opt-in utility-scorer hook), and a tampered checkpoint runs nothing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

import adpo
from adpo.trainer.checkpoint import CheckpointError, read_state

SRC = Path(adpo.__file__).parent
SCORER_HOOK = SRC / "eval" / "scorers.py"  # the one place a config may name code (docs/failure-modes.md)
DYNAMIC = {"import_module", "__import__", "exec", "eval", "compile", "run_module", "run_path"}
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("joblib", "load"), ("yaml", "load"),
              ("yaml", "unsafe_load"), ("marshal", "loads"), ("shelve", "open")}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):  # a bare call: exec(...), __import__(...)
                yield node, "builtins", f.id
            elif isinstance(f, ast.Attribute):  # module.function(...); method calls (model.eval()) have owner None
                yield node, f.value.id if isinstance(f.value, ast.Name) else None, f.attr


def _kw(node: ast.Call, key: str):
    return next((k.value for k in node.keywords if k.arg == key), None)


def test_source_loads_no_pickle_and_imports_no_user_strings():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        for node, owner, name in _calls(path):
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if owner == "torch" and name == "load":
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if (owner, name) in UNPICKLERS or (name == "load" and isinstance(_kw(node, "allow_pickle"), ast.Constant)
                                               and _kw(node, "allow_pickle").value is True):
                problems.append(f"{where}: {owner}.{name} can run code from the file it reads")
            trc = _kw(node, "trust_remote_code")
            if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
                problems.append(f"{where}: trust_remote_code runs code from a model folder")
            if name in DYNAMIC and owner in ("importlib", "builtins", "runpy") and path != SCORER_HOOK:
                problems.append(f"{where}: {name}() of a string")
    assert problems == []
    hook = [(owner, name) for _, owner, name in _calls(SCORER_HOOK) if name in DYNAMIC]
    assert hook == [("importlib", "import_module")]  # the scanner sees the hook, so it is not blind


class RunsCode:
    """What a crafted checkpoint would hold: unpickling it calls ``open(sentinel, "w")``."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return open, (self.sentinel, "w")


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_tampered_checkpoint_file_is_refused_and_runs_nothing(tmp_path, name):
    sentinel = tmp_path / "code-ran"
    torch.save({"state": RunsCode(sentinel)}, tmp_path / name)
    with pytest.raises(CheckpointError) as e:
        read_state(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}: not a plain-tensor checkpoint (")
    assert "adpo never loads code from a run folder" in str(e.value)
    assert not sentinel.exists()


def test_resume_from_a_tampered_run_folder_is_one_line_and_runs_nothing(tiny_dir, export_dir, tmp_path, capsys):
    from adpo.cli import main

    out = tmp_path / "run"
    args = ["train", "--method", "dpo", "--model", str(tiny_dir), "--out", str(out), "--no-progress",
            "--data", str(export_dir / "preference_train.jsonl"), "train.steps=1", "train.batch_size=2"]
    assert main(args) == 0
    rng = out / "checkpoints" / "step-000001" / "rng.pt"
    sentinel = tmp_path / "code-ran"
    torch.save([{"torch": RunsCode(sentinel)}], rng)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the model's loading bar
    assert err.startswith(f"adpo: error: {rng}: not a plain-tensor checkpoint (")
    assert not sentinel.exists()


def test_module_function_scorer_is_trusted_code_only_by_the_users_word(tmp_path, monkeypatch):
    from adpo.eval.scorers import TRUST_ENV, scorer
    from adpo.utils.config import ConfigError

    (tmp_path / "shared_scoring.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w')\n\ndef f1(response, answer):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(ConfigError) as e:
        scorer("shared_scoring:f1")
    assert str(e.value) == ("utility.scorer 'shared_scoring:f1' would import and run Python code named by the config; "
                            "adpo runs it only if you trust it: ADPO_TRUSTED_SCORERS=shared_scoring:f1 "
                            "(see docs/failure-modes.md)")
    assert "shared_scoring" not in sys.modules and not (tmp_path / "imported").exists()
    monkeypatch.setenv(TRUST_ENV, "other:fn, shared_scoring:f1")
    assert scorer("shared_scoring:f1")("a", "b") == 1.0
    assert scorer("exact")("Red.", "red")
