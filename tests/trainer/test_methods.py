"""Every method runs a few steps on the (tiny) organism and its characteristic quantity moves the right way."""

from __future__ import annotations

import math

import pytest
import torch

from adpo.data.collate import halves, image_keys
from adpo.data.formats import load_rows
from adpo.data.stream import BatchStream
from adpo.models.adapters import load_base, resolve_run
from adpo.threats.codecs import codec_for
from adpo.threats.image import ImagePGD
from adpo.threats.objectives import dpo_margin
from adpo.trainer.config import RunConfig
from adpo.trainer.loop import train
from adpo.trainer.tracking import read_metrics


def first_last(out, key):
    rows = [r for r in read_metrics(out / "metrics.jsonl") if key in r]
    return rows[0][key], rows[-1][key]


def attacked_margin(model_dir, adapter, data, eps=0.2, steps=10):
    """Mean log p(chosen) - log p(rejected) under a fresh image PGD on the margin, on fixed pairs."""
    from peft import PeftModel

    base, proc = load_base(model_dir)
    model = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    batch = BatchStream(load_rows(data, "pairs"), proc, 8, seed=123).batch(0)
    chosen, rejected = halves(batch)
    inputs = {**image_keys(batch), "prompt_mask": chosen["prompt_mask"]}
    cfg = ImagePGD(eps=eps, step_size=eps / 4, steps=steps)
    res = cfg.run(model, inputs, dpo_margin(chosen, rejected), codec=codec_for(proc),
                  generator=torch.Generator().manual_seed(0))
    return float(res.loss.mean())


def test_sft_lowers_the_refusal_loss(run_args, tmp_path):
    train(RunConfig.from_dict(run_args("sft")), progress=False)
    before, after = first_last(tmp_path / "run", "sft/chosen_ce")
    assert after < before


def test_dpo_raises_the_clean_margin_and_starts_at_ln2(run_args, tmp_path):
    run = RunConfig.from_dict(run_args("dpo"))
    summary = train(run, progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before the first update
    assert rows[-1]["rewards/margins"] > 0 and rows[-1]["adv/margin_clean"] > rows[0]["adv/margin_clean"]
    assert summary["steps"] == 4 and (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert set(rows[0]) >= {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                            "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "epoch"}


def test_at_lowers_the_attacked_refusal_loss(run_args, tmp_path):
    run = RunConfig.from_dict(run_args("at", train={"steps": 6}))
    train(run, progress=False)
    before, after = first_last(tmp_path / "run", "adv/chosen_ce_attacked")
    assert after < before
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["adv/image_linf"] <= 0.2 + 1e-6 for r in rows)
    assert "sft/utility_ce" in rows[0]


@pytest.mark.parametrize("threat", ["image", "joint"])
def test_adpo_raises_the_margin_under_attack(run_args, tiny_dir, export_dir, tmp_path, threat):
    data = export_dir / "preference_train.jsonl"
    at = RunConfig.from_dict(run_args("at", out="at", train={"steps": 2}))
    train(at, progress=False)
    run = RunConfig.from_dict(run_args("adpo", reference=str(tmp_path / "at"), utility_data=None,
                                       train={"steps": 8, "threat": threat, "utility_weight": 0.0}))
    train(run, progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert abs(rows[0]["loss"] - math.log(2)) > 1e-4  # attacked policy vs clean reference: not ln 2 at step 1
    assert "adv/margin_clean" in rows[0] and "adv/attack_loss" in rows[0]
    if threat == "joint":
        assert any(k.startswith("adv/latent_rel@") for k in rows[0])
    before = attacked_margin(tiny_dir, resolve_run(tmp_path / "at"), data)
    after = attacked_margin(tiny_dir, resolve_run(tmp_path / "run"), data)
    assert after > before + 0.5, (before, after)


def test_ar_dpo_starts_from_the_at_model(run_args, tmp_path):
    train(RunConfig.from_dict(run_args("at", out="at", train={"steps": 2})), progress=False)
    run = RunConfig.from_dict(run_args("ar-dpo", reference=str(tmp_path / "at"), utility_data=None,
                                       train={"steps": 2, "utility_weight": 0.0}))
    train(run, progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["adv/margin_clean"] != 0.0


def test_at_dpo_uses_the_plain_reference(run_args, tmp_path):
    run = RunConfig.from_dict(run_args("at-dpo", utility_data=None, train={"steps": 2, "utility_weight": 0.0,
                                                                            "threat": "latent"}))
    train(run, progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert abs(rows[0]["loss"] - math.log(2)) > 1e-5
    assert any(k.startswith("adv/latent_l2_max@") for k in rows[0])


def test_gradient_accumulation_equals_the_larger_batch(run_args, tmp_path):
    from safetensors.torch import load_file

    common = {"steps": 2, "lr": 5e-3, "utility_weight": 0.0}
    train(RunConfig.from_dict(run_args("dpo", out="acc", utility_data=None,
                                       train={**common, "batch_size": 2, "grad_accum": 2})), progress=False)
    train(RunConfig.from_dict(run_args("dpo", out="big", utility_data=None,
                                       train={**common, "batch_size": 4})), progress=False)
    a = load_file(str(tmp_path / "acc" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "big" / "adapter" / "adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
