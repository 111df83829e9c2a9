"""Two-process CPU DDP (gloo) through torchrun: the same loop, sharded data, synchronised gradients.

2 processes x 2 pairs must end where 1 process x 4 pairs ends (DDP averages the gradients of one global
batch); the adversarial run checks that attacks on the unwrapped model work under DDP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], procs: int, out) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
               str(free_port()), "-m", "adpo.cli"] if procs > 1 else [sys.executable, "-m", "adpo.cli"])
    res = subprocess.run(launch + cmd + ["--out", str(out), "--no-progress"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def args(tiny_dir, export_dir, method, batch):
    return ["train", "--method", method, "--model", str(tiny_dir), "--data",
            str(export_dir / "preference_train.jsonl"), "train.steps=3", f"train.batch_size={batch}", "train.lr=5e-3",
            "train.scheduler=constant", "train.warmup_ratio=0"]


def weights(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_two_process_ddp_matches_one_process_with_the_global_batch(tiny_dir, export_dir, tmp_path):
    # the DDP run also uses the memory options (chunked log-probs through a decoder hook, activation
    # checkpointing), which must change neither the gradients nor DDP's synchronisation
    memory = ["train.logps_chunk=5", "train.gradient_checkpointing=true"]
    stdout = run(args(tiny_dir, export_dir, "dpo", 2) + memory, 2, tmp_path / "ddp")
    assert "2 process(es), MULTI_CPU" in stdout
    run(args(tiny_dir, export_dir, "dpo", 4), 1, tmp_path / "single")
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train

    stdout = run(args(tiny_dir, export_dir, "at-dpo", 2) + memory + [
        "train.threat=joint", "image.steps=2", "latent.steps=2", "latent.relative=true"], 2, tmp_path / "adv")
    assert "MULTI_CPU" in stdout and (tmp_path / "adv" / "metrics.jsonl").exists()
    assert torch.isfinite(torch.stack([v.abs().max() for v in weights(tmp_path / "adv").values()])).all()
