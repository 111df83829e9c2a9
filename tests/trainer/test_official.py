"""Faithful to the official recipe (issue 16): the ``fidelity`` switch, the AT stage's step count, TRL 1.16's
loss names, dropout off in the attack and reference passes, and the paper's own data files through
``adpo train`` (AT, ADPO) and ``adpo eval`` with a random LLaVA-1.5 at 336 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adpo.trainer.config import RunConfig
from adpo.utils.config import ConfigError, apply_overrides, load_yaml

ROOT = Path(__file__).resolve().parents[2]
SLICE = ROOT.parent / "shared" / "data" / "official-adpo-slice"  # beside the checkout (its README there)
OFFICIAL_AT = ["train.epochs=2", "train.batch_size=4"]  # the AT command in configs/llava-1.5-7b.yaml's header


def _run(method="at", **train):
    raw = {"method": method, "model": "m", "data": "d", "out": "o", "utility_data": "u", "reference": "r",
           "train": train}
    if method in ("at", "dpo", "at-dpo", "sft"):
        raw.pop("reference")
    return RunConfig.from_dict(raw)


def test_fidelity_official_takes_the_official_values_and_explicit_options_win():
    ours, official = _run().train, _run(fidelity="official").train
    assert (ours.template, ours.at_stream, ours.sft_reduction, ours.policy_init, ours.at_floor) == \
        ("model", "paired", "sequence", "continue", None)
    assert (official.template, official.at_stream, official.sft_reduction, official.policy_init,
            official.at_floor) == ("llava", "mixed", "token", "merge", 0.5)
    mixed = _run(fidelity="official", template="model", at_floor=0)
    assert (mixed.train.template, mixed.train.at_floor, mixed.train.at_stream) == ("model", 0, "mixed")
    with pytest.raises(ConfigError, match="fidelity"):
        _run(fidelity="paper")


def test_official_config_runs_350_at_steps_on_the_official_sizes():
    """2 epochs over 200 harmful + 500 utility rows shuffled together at batch 4 = 350 optimizer steps (the
    official AT run); the ADPO stage: 5 epochs of 200 pairs at batch 2 = 500. Counted, not trained."""
    from adpo.trainer.loop import total_steps

    raw = load_yaml(ROOT / "configs" / "llava-1.5-7b.yaml")
    assert raw["train"]["fidelity"] == "official"
    base = {"model": "m", "data": "d", "out": "o", "utility_data": "u"}
    at = RunConfig.from_dict(apply_overrides(raw, OFFICIAL_AT) | base | {"method": "at"})
    assert total_steps(at, 200, 500) == 350
    assert total_steps(at, 200, 500, processes=2) == 175
    adpo = RunConfig.from_dict(raw | base | {"method": "adpo", "reference": "r"})
    assert total_steps(adpo, 200, 500) == 500
    ours = RunConfig.from_dict(apply_overrides(raw, OFFICIAL_AT + ["train.fidelity=ours", "train.template=llava",
                                                                  "train.at_floor=0.5"]) | base | {"method": "at"})
    assert total_steps(ours, 200, 500) == 100  # epochs over the pairs only: what issue 16 found


def test_trl_loss_names_and_the_rpo_alpha_alias():
    """TRL 1.16 dropped ``rpo_alpha``: the SFT term on the chosen answer is ``loss_type`` "sft" weighted by
    ``loss_weights`` (its token mean); the old name stays an alias."""
    import dataclasses

    from trl import DPOConfig

    names = {f.name for f in dataclasses.fields(DPOConfig)}
    assert "rpo_alpha" not in names and {"loss_type", "loss_weights"} <= names
    assert "'sft'" in DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    new = _run("dpo", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]).train
    old = _run("dpo", rpo_alpha=0.5).train
    assert new.sft_weight == old.sft_weight == 0.5 and new.preference_loss == old.preference_loss == ("sigmoid", 1.0)
    for bad in ({"loss_type": ["sigmoid", "sft"], "rpo_alpha": 1.0}, {"loss_type": ["sigmoid", "ipo"]},
                {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, {"loss_type": "kto"}):
        with pytest.raises(ConfigError):
            _run("dpo", **bad)


def test_reference_and_attack_are_deterministic_with_dropout(tiny_dir, export_dir, tmp_path, run_args, monkeypatch):
    """LoRA dropout 0.5 on the policy and on the AT reference adapter: the reference log-probs and the attack
    are the same on every call (dropout off there, flags restored); the policy pass keeps its dropout."""
    from peft import get_peft_model_state_dict

    from adpo.models.adapters import LoraSettings, build_policy, load_base
    from adpo.trainer import steps
    from adpo.trainer.loop import setup

    base, _ = load_base(tiny_dir)
    at = build_policy(base, LoraSettings(dropout=0.5)).model
    torch.manual_seed(0)
    for name, p in at.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a non-zero adapter: its dropout changes the output
    assert any(v.abs().sum() > 0 for v in get_peft_model_state_dict(at).values())
    at.save_pretrained(tmp_path / "at")
    run = RunConfig.from_dict(run_args("ar-dpo", lora={"dropout": 0.5}, reference=str(tmp_path / "at")))
    s = setup(run)
    batch = {k: v for k, v in s.stream.batch(0).items()}
    refs, attacks = [], []
    real = steps.dpo_loss

    def spy(pc, pr, rc, rr, *a, **k):
        refs.append((rc.detach().clone(), rr.detach().clone()))
        return real(pc, pr, rc, rr, *a, **k)

    monkeypatch.setattr(steps, "dpo_loss", spy)
    dropouts = [m for m in s.policy.model.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.5]
    assert dropouts and all(m.training for m in dropouts)
    for _ in range(2):
        s.ctx.generator.manual_seed(7)
        attacks.append(steps.attack(s.ctx, batch).loss.detach().clone())
        s.ctx.generator.manual_seed(7)
        steps.dpo_step(s.ctx, batch, None, log=False)
    assert torch.equal(refs[0][0], refs[1][0]) and torch.equal(refs[0][1], refs[1][1])
    assert torch.equal(attacks[0], attacks[1])
    assert all(m.training for m in dropouts)  # restored: the policy pass trains with dropout
    with torch.no_grad(), s.policy.reference_model() as ref:  # what the fix prevents: the reference under dropout
        a = steps.pair_logps(ref, batch, None, False, s.ctx)[0]
        b = steps.pair_logps(ref, batch, None, False, s.ctx)[0]
    assert not torch.equal(a, b)


@pytest.fixture(scope="module")
def llava336(tmp_path_factory):
    """A random LLaVA-1.5-shaped model (CLIP 336 px, patch 14: 576 image tokens) with the real processor classes."""
    from adpo.models import synthetic

    shape = synthetic.Shape(image_size=336, patch_size=14, max_positions=2048, vision_feature_layer=-2)
    model, processor = synthetic.build("llava", shape)
    return synthetic.save(model, processor, tmp_path_factory.mktemp("llava336") / "model")


@pytest.mark.slow
@pytest.mark.skipif(not SLICE.is_dir(), reason="the official data slice (../shared/data) is not on this machine")
def test_official_slice_trains_at_then_adpo_and_evaluates_from_the_cli(llava336, tmp_path, capsys):
    """The authors' files as released (multi-turn LLaVA-Instruct rows, HarmBench PNGs of mixed size and mode,
    dataset_info.json), the official-recipe config, one AT and one ADPO step, then ``adpo eval``."""
    from adpo.cli import main

    quick = ["--no-progress", "train.steps=1", "train.batch_size=4", "image.steps=1", "train.max_length=1024",
             "train.model_dtype=float32", "lora.r=4", "lora.alpha=8", "train.log_every=1"]
    common = ["train", "--config", str(ROOT / "configs" / "llava-1.5-7b.yaml"), "--model", str(llava336),
              "--data", f"{SLICE}:harmbench"]
    assert main(common + ["--method", "at", "--utility-data", f"{SLICE}:llava", "--out", str(tmp_path / "at"),
                          *quick]) == 0
    assert main(common + ["--method", "adpo", "--reference", str(tmp_path / "at"), "--out",
                          str(tmp_path / "adpo"), *quick]) == 0
    printed = capsys.readouterr().out
    assert "fidelity: official" in printed and "template: llava" in printed
    cfg = json.loads((tmp_path / "adpo" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8  # merge-then-fresh-LoRA: the AT adapter (4) and the fresh one (4), stacked
    metrics = [json.loads(x) for x in (tmp_path / "adpo" / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(metrics[-1]["loss"]))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(llava336), "--adapter", str(tmp_path / "adpo"), "--data",
                 f"{SLICE}:harmbench", "--tasks", "clean", "--judges", "gcg13", "--out", str(out), "--no-progress",
                 "limit=2", "max_new_tokens=2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results and (out / "samples_clean.jsonl").read_text().count("\n") == 2
