"""accelerate's trackers (offline), evaluation during training, the best adapter and the model card."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from adpo.trainer.config import RunConfig
from adpo.trainer.loop import train
from adpo.trainer.tracking import read_metrics


def _run(run_args, export_dir, out, **train_opts):
    raw = run_args("dpo", out)  # cheap steps; the evaluation's attack is train.threat whatever the method
    raw["train"] = {**raw["train"], **train_opts}
    raw["eval_data"] = str(export_dir / "preference_train.jsonl")
    return RunConfig.from_dict(raw)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard (the dev extra) missing")
def test_eval_during_training_logs_eval_metrics_to_tensorboard_and_keeps_the_best(run_args, export_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(run_args, export_dir, "tb", eval_every=2, eval_limit=4, eval_attack_steps=2, keep_best=True,
               report_to="tensorboard")
    train(run, progress=False)
    out = tmp_path / "tb"
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/margin_attacked" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["eval/margin_attacked"] <= r["eval/margin_clean"] + 1e-4  # the attack lowers the margin
        assert 0 <= r["eval/attack_success"] <= 1 and 0 <= r["eval_rewards/accuracies"] <= 1
        assert {"eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"} <= set(r)
    # tensorboard event files, read back with tensorboard's own reader
    acc = EventAccumulator(str(out / "runs" / "adpo"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in rows if "loss" in r]
    assert [round(e.value, 4) for e in acc.Scalars("eval/margin_attacked")] == \
        [round(r["eval/margin_attacked"], 4) for r in evals]
    # keep_best: OUT/best holds the adapter of the best attacked margin, a plain peft folder with its card
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["eval/margin_attacked"] == max(r["eval/margin_attacked"] for r in evals)
    assert best["step"] == max(evals, key=lambda r: r["eval/margin_attacked"])["step"]
    assert (out / "best" / "adapter" / "adapter_model.safetensors").is_file()
    # the model card beside the adapter: front matter the hub reads, the recipe, the last evaluation
    card = (out / "adapter" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == run.model and front["library_name"] == "peft" and "dpo" in front["tags"]
    assert "eval/margin_attacked" in card and "## Recipe" in card
    # the evaluation did not change the training: the same losses as a run without it
    plain = _run(run_args, export_dir, "plain")
    train(plain, progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl")]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(losses, abs=1e-6)


def test_named_tracker_that_is_missing_names_its_extra(run_args, export_dir, tmp_path, monkeypatch):
    from accelerate.utils import imports

    from adpo.utils.config import ConfigError

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    run = _run(run_args, export_dir, "wb", report_to="tensorboard,wandb")
    with pytest.raises(ConfigError, match=r"pip install 'adpo\[wandb\]'"):
        train(run, progress=False)
    assert not (tmp_path / "wb").exists()
    with pytest.raises(ConfigError, match="unknown tracker"):
        _run(run_args, export_dir, "x", report_to="neptune")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb (the wandb extra) not installed")
def test_wandb_offline_writes_its_run_folder(run_args, export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(_run(run_args, export_dir, "wandb", steps=2, report_to="wandb"), progress=False)
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow (the mlflow extra) not installed")
def test_mlflow_logs_the_runs_metrics_to_a_local_store(run_args, export_dir, tmp_path, monkeypatch):
    """A file store in tmp_path (mlflow 3 keeps it behind MLFLOW_ALLOW_FILE_STORE), read back with mlflow's client."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    train(_run(run_args, export_dir, "mlf", steps=3, report_to="mlflow"), progress=False)
    import mlflow

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("adpo").experiment_id])
    assert run.info.run_name == "mlf" and run.info.status == "FINISHED"
    assert run.data.params["train.report_to"] == "mlflow" and run.data.params["method"] == "dpo"
    rows = read_metrics(tmp_path / "mlf" / "metrics.jsonl")
    keys = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert {"loss", "rewards/margins"} <= keys and [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert set(run.data.metrics) == keys
    for key in keys:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r[key])) for r in rows if key in r]


def test_mlflow_without_its_store_packages_names_the_extra(run_args, export_dir, tmp_path, monkeypatch):
    """mlflow-skinny alone cannot open mlflow 3's default sqlite store: refused before the run folder exists."""
    from accelerate.utils import imports

    from adpo.trainer import tracking
    from adpo.utils.config import ConfigError

    monkeypatch.setattr(imports, "is_mlflow_available", lambda: True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    with pytest.raises(ConfigError, match=r"sqlalchemy and alembic; pip install 'adpo\[mlflow\]'"):
        train(_run(run_args, export_dir, "mlf", report_to="mlflow"), progress=False)
    assert not (tmp_path / "mlf").exists()
    assert "mlflow" not in tracking.log_with("all")


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio (the trackio extra) not installed; "
                    "every release caps pillow below 13, so it is not in dev (docs/training.md, Trackers)")
def test_trackio_logs_the_runs_metrics_to_its_local_database(run_args, export_dir, tmp_path, monkeypatch):
    """trackio's local store (a sqlite file per project under TRACKIO_DIR), read back with trackio's own reader."""
    import sys

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    assert "trackio" not in sys.modules, "trackio imported before TRACKIO_DIR was set"
    train(_run(run_args, export_dir, "trk", steps=3, report_to="trackio"), progress=False)
    from trackio.sqlite_storage import SQLiteStorage

    assert SQLiteStorage.get_runs("adpo") == ["trk"] and list((tmp_path / "trackio").glob("adpo*.db"))
    logged = {r["step"]: r for r in SQLiteStorage.get_logs("adpo", "trk")}
    rows = read_metrics(tmp_path / "trk" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    for r in rows:
        for key, value in r.items():
            if key != "step" and isinstance(value, (int, float)):
                assert logged[r["step"]][key] == pytest.approx(value), (r["step"], key)
