"""Run options for a few cheap training steps on the tiny organism (tests/conftest.py: tiny_dir, export_dir)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def run_args(tiny_dir, export_dir, tmp_path):
    """Keyword arguments of a RunConfig for a few cheap steps."""
    def make(method: str, out: str = "run", **sections):
        raw = {"method": method, "model": str(tiny_dir), "data": str(export_dir / "preference_train.jsonl"),
               "utility_data": str(export_dir / "sft_train.jsonl"), "out": str(tmp_path / out),
               "train": {"steps": 4, "batch_size": 4, "utility_batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0,
                         "scheduler": "constant"},
               "image": {"steps": 2, "eps": 0.2, "step_size": 0.05},
               "latent": {"steps": 2, "eps": 0.5, "relative": True, "step_size": 0.2, "optimizer": "sign"}}
        for name, opts in sections.items():
            if isinstance(opts, dict):
                raw[name] = {**raw.get(name, {}), **opts}
            else:
                raw[name] = opts
        return raw
    return make


@pytest.fixture()
def killed_after(monkeypatch):
    """``killed_after(run, step)``: train ``run`` until its step-``step`` checkpoint is complete, then stop as a
    kill would (nothing after that checkpoint is written)."""
    from adpo.trainer import loop

    def run_until(run, step: int) -> None:
        real_save = loop.checkpoint.save

        def save_then_die(folder, at, *args, **kwargs):
            path = real_save(folder, at, *args, **kwargs)
            if at == step:
                raise KeyboardInterrupt(f"simulated kill after the step-{step} checkpoint")
            return path

        monkeypatch.setattr(loop.checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            loop.train(run, progress=False)
        monkeypatch.setattr(loop.checkpoint, "save", real_save)
    return run_until
