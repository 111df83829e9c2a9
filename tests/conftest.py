"""Shared fixtures: a tiny untrained organism (real LLaVA classes) built offline in about a second, saved to
disk, and a small export of its world (what `adpo train` and `adpo eval` read)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def world():
    from adpo.organism.world import World, WorldConfig

    return World(WorldConfig(seed=0))


@pytest.fixture(scope="session")
def processor():
    from adpo.organism.build import build_processor

    return build_processor(32, 8)


@pytest.fixture(scope="session")
def tiny_cfg():
    from adpo.organism.build import ModelConfig

    return ModelConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=2, text_intermediate=64,
                       text_heads=2, vision_heads=2)


@pytest.fixture()
def tiny_model(processor, tiny_cfg):
    from adpo.organism.build import build_model

    return build_model(processor, 32, tiny_cfg, seed=0).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, processor, tiny_cfg):
    from adpo.organism.build import build_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    build_model(processor, 32, tiny_cfg, seed=0).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    from adpo.organism.export import ExportConfig, export

    path = tmp_path_factory.mktemp("export") / "data"
    export(path, cfg=ExportConfig(n_pairs=32, n_sft=32, n_eval=8))
    return path


@pytest.fixture(scope="session")
def launch():
    """``launch(args, procs)``: run ``adpo <args>`` (or ``script`` with args) in ``procs`` CPU processes through
    torchrun (gloo, ``ACCELERATE_USE_CPU=1``; one plain process when ``procs`` is 1); returns the finished
    process, asserting success unless ``check=False``. ``start_new_session`` lets a test kill the group."""
    import socket
    import subprocess
    import sys

    def run(args: list[str], procs: int = 1, *, script: str | None = None, check: bool = True,
            timeout: int = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        target = [script] if script else ["-m", "adpo.cli"]
        if procs > 1:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                   str(port), *target]
        else:
            cmd = [sys.executable, *target]
        res = subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout,
                             start_new_session=True)
        if check:
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        return res
    return run
