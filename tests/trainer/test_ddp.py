"""Two-process CPU DDP (gloo) through torchrun: the same loop, sharded data, synchronised gradients.

2 processes x 2 pairs must end where 1 process x 4 pairs ends (DDP averages the gradients of one global
batch); the adversarial run checks that attacks on the unwrapped model work under DDP; a 2-process run
killed (SIGKILL) after a checkpoint resumes to the same bits as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpo.trainer.tracking import read_metrics


def args(tiny_dir, export_dir, method, batch):
    return ["train", "--method", method, "--model", str(tiny_dir), "--data",
            str(export_dir / "preference_train.jsonl"), "train.steps=3", f"train.batch_size={batch}", "train.lr=5e-3",
            "train.scheduler=constant", "train.warmup_ratio=0"]


def weights(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def run(launch, cmd: list[str], procs: int, out) -> str:
    return launch(cmd + ["--out", out, "--no-progress"], procs).stdout


def test_two_process_ddp_matches_one_process_with_the_global_batch(launch, tiny_dir, export_dir, tmp_path):
    # the DDP run also uses the memory options (chunked log-probs through a decoder hook, activation
    # checkpointing), which must change neither the gradients nor DDP's synchronisation
    memory = ["train.logps_chunk=5", "train.gradient_checkpointing=true"]
    stdout = run(launch, args(tiny_dir, export_dir, "dpo", 2) + memory, 2, tmp_path / "ddp")
    assert "2 process(es), MULTI_CPU" in stdout
    run(launch, args(tiny_dir, export_dir, "dpo", 4), 1, tmp_path / "single")
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k)  # it did train

    stdout = run(launch, args(tiny_dir, export_dir, "at-dpo", 2) + memory + [
        "train.threat=joint", "image.steps=2", "latent.steps=2", "latent.relative=true"], 2, tmp_path / "adv")
    assert "MULTI_CPU" in stdout and (tmp_path / "adv" / "metrics.jsonl").exists()
    assert torch.isfinite(torch.stack([v.abs().max() for v in weights(tmp_path / "adv").values()])).all()


KILLED = str(Path(__file__).with_name("killed.py"))  # adpo, SIGKILLed after a given checkpoint


@pytest.mark.slow
def test_two_process_run_killed_after_a_checkpoint_resumes_bit_identically(launch, tiny_dir, export_dir, tmp_path):
    # random starts, LoRA dropout, warm-up + cosine: every rank's RNG and the schedule must come back
    opts = args(tiny_dir, export_dir, "at-dpo", 2) + [
        "train.steps=6", "train.save_every=3", "train.scheduler=cosine", "train.warmup_ratio=0.34",
        "train.threat=joint", "image.steps=2", "image.random_start=true", "latent.steps=2", "latent.relative=true",
        "latent.random_start=true", "lora.dropout=0.1"]
    run(launch, opts, 2, tmp_path / "full")
    part = tmp_path / "part"
    res = launch([3, *opts, "--out", part, "--no-progress"], 2, script=KILLED, check=False)
    assert res.returncode != 0 and "-9" in res.stderr, res.stderr[-2000:]
    assert (part / "checkpoints" / "step-000003" / "state.json").exists() and not (part / "adapter").exists()
    stdout = run(launch, opts + ["--resume"], 2, part)
    assert "resumed from" in stdout and "(step 3 of 6)" in stdout
    a, b = weights(tmp_path / "full"), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time/step_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(part / "metrics.jsonl")) == strip(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    assert len(read_metrics(part / "metrics.jsonl")) == 6
