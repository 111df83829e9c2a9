"""FSDP2 on 2 CPU processes (gloo): AT and ADPO under the joint threat end where 1 process with the same global
batch (accumulating the same micro-batches) ends: losses and LoRA weights within 1e-5; and the chunked
log-prob refusal holds under FSDP.

accelerate 1.15 runs FSDP only on accelerator devices (on CPU it quietly runs MULTI_CPU, which adpo now
refuses: test_check_engine_refuses_what_accelerate_would_run_instead), so the sharding is torch's own
``fully_shard`` standing in for accelerate's preparation (tests/trainer/fsdp_cpu.py); the rest is the loop's
``setup`` and ``Session.step``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpo.trainer import loop
from adpo.trainer.config import RunConfig
from adpo.trainer.tracking import read_metrics
from adpo.utils.config import ConfigError

SCRIPT = str(Path(__file__).with_name("fsdp_cpu.py"))
JOINT = {"threat": "joint", "steps": 3, "lr": 5e-3}


@pytest.mark.slow
def test_fsdp2_on_two_processes_matches_one_process(launch, run_args, tmp_path):
    loop.train(RunConfig.from_dict(run_args("at", out="ref", train={"steps": 1})), progress=False)
    # 1 process accumulates the 2 processes' micro-batches (global batch 4 both ways): attacked in batches
    # of 4 instead, a behaviour's forward differs by ~1e-7 (its batch's padding), which sign-PGD and Adam's
    # first steps grow to ~1e-2 in the weights (measured; DDP alike), whatever the engine
    runs = {n: [json.dumps(run_args(method, out=f"{n}-{method}", train={**JOINT, "batch_size": 2, "grad_accum": accum,
                                                                          "utility_batch_size": 2},
                                    **({"reference": str(tmp_path / "ref")} if method == "adpo" else {})))
                for method in ("at", "adpo")] for n, accum in (("one", 2), ("fsdp", 1))}
    for name, procs in (("one", 1), ("fsdp", 2)):
        (tmp_path / name).mkdir()
        launch([tmp_path / name, *runs[name]], procs, script=SCRIPT)
    for i in (0, 1):  # AT, ADPO
        one, fsdp = (json.loads((tmp_path / n / f"{i}.json").read_text()) for n in ("one", "fsdp"))
        assert fsdp["processes"] == 2 and fsdp["sharded"] > 0 and one["sharded"] == 0
        assert fsdp["losses"] == pytest.approx(one["losses"], rel=1e-5)
        a, b = (load_file(str(tmp_path / n / f"{i}.safetensors")) for n in ("one", "fsdp"))
        assert a.keys() == b.keys() and any("lora_B" in k for k in a)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
        assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train
    refused = json.loads((tmp_path / "fsdp" / "0.json").read_text())["refused"]
    assert "train.logps_chunk=4 needs the full output head outside the forward, which FSDP shards" in refused


class _Acc:
    def __init__(self, kind: str, processes: int):
        self.distributed_type = type("T", (), {"name": kind})()
        self.num_processes, self.device = processes, torch.device("cpu")


def test_check_engine_refuses_what_accelerate_would_run_instead(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launched as 2 processes, but accelerate runs each alone"):
        loop.check_engine(_Acc("NO", 1))  # accelerate launch --num_processes 2 on a machine without GPUs
    loop.check_engine(_Acc("MULTI_CPU", 2))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="asks for FSDP, but accelerate runs MULTI_CPU on cpu"):
        loop.check_engine(_Acc("MULTI_CPU", 2))
    loop.check_engine(_Acc("FSDP", 2))


@pytest.mark.slow
def test_fsdp2_run_killed_after_a_sharded_checkpoint_resumes_bit_identically(launch, run_args, tmp_path):
    # as test_ddp's kill -9 test: random starts, LoRA dropout, warm-up + cosine, so every rank's RNG, the
    # optimizer's sharded moments and the schedule must all come back
    def run(out: str) -> str:
        return json.dumps(run_args("at-dpo", out=out, train={
            "steps": 3, "save_every": 2, "batch_size": 2, "scheduler": "cosine", "warmup_ratio": 0.34,
            "threat": "joint"}, image={"random_start": True}, latent={"random_start": True}, lora={"dropout": 0.1}))

    summary = lambda res: json.loads(res.stdout.strip().splitlines()[-1])  # noqa: E731
    full = summary(launch(["train", run("full")], 2, script=SCRIPT))
    assert full["distributed_type"] == "FSDP" and full["processes"] == 2 and full["resumed_from"] == 0
    res = launch(["train", run("part"), "kill-after-2"], 2, script=SCRIPT, check=False)
    assert res.returncode != 0 and "-9" in res.stderr, res.stderr[-2000:]
    part = tmp_path / "part"
    saved = part / "checkpoints" / "step-000002"
    assert (saved / "state.json").exists() and not (part / "adapter").exists()
    # each rank wrote its own shards; no rank-0-only adapter or optimizer file
    shards = sorted(p.name for p in (saved / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (saved / "adapter").exists() and not (saved / "optimizer.pt").exists()
    resumed = summary(launch(["train", run("part"), "resume"], 2, script=SCRIPT))
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    a, b = (load_file(str(tmp_path / n / "adapter" / "adapter_model.safetensors")) for n in ("full", "part"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time/step_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(part / "metrics.jsonl")) == strip(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    assert len(read_metrics(part / "metrics.jsonl")) == 3
