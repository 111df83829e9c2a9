"""Checkpoints: an interrupted-and-resumed run ends bit-identical to an uninterrupted one (CPU, fixed seed)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from adpo.trainer import loop
from adpo.trainer.config import RunConfig
from adpo.trainer.tracking import read_metrics

# adversarial (joint image + latent threat, random start), utility term, LoRA dropout, warm-up + cosine:
# every piece of state a resume must restore is exercised
OPTS = {"train": {"steps": 6, "save_every": 3, "scheduler": "cosine", "warmup_ratio": 0.34, "threat": "joint",
                  "utility_weight": 0.5},
        "image": {"random_start": True}, "lora": {"dropout": 0.1}}


def test_interrupted_and_resumed_run_is_bit_identical(run_args, tmp_path, killed_after):
    loop.train(RunConfig.from_dict(run_args("at-dpo", out="full", **OPTS)), progress=False)

    part = RunConfig.from_dict(run_args("at-dpo", out="part", **OPTS))
    killed_after(part, 3)
    assert not (tmp_path / "part" / "adapter").exists()
    summary = loop.train(part, resume=True, progress=False)
    assert summary["resumed_from"] == 3

    full_w = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    part_w = load_file(str(tmp_path / "part" / "adapter" / "adapter_model.safetensors"))
    assert full_w.keys() == part_w.keys()
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time/step_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "part" / "metrics.jsonl")) == strip(
        read_metrics(tmp_path / "full" / "metrics.jsonl"))
    kept = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir())
    assert kept == ["step-000003", "step-000006"]


def test_checkpoint_adapter_loads_with_plain_peft(run_args, tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    loop.train(RunConfig.from_dict(run_args("dpo", train={"steps": 2})), progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert {p.name for p in ckpt.iterdir()} >= {"adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), ckpt / "adapter")
