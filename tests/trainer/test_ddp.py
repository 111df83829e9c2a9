"""Two-process CPU DDP (gloo) through torchrun: the same loop, sharded data, synchronised gradients.

2 processes x 2 pairs must end where 1 process x 4 pairs ends (DDP averages the gradients of one global
batch); the adversarial run checks that attacks on the unwrapped model work under DDP.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file


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
