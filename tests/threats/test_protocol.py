"""The threat protocol as a reader extends it: docs/architecture.md's worked example (an adversarial patch in
a few dozen lines plus one registry line), run as written through training and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _doc_example() -> str:
    text = DOC.read_text()
    start = text.index("# src/adpo/threats/patch.py")
    return text[start: text.index("```", start)]


@pytest.fixture()
def patch_threat(monkeypatch):
    """The documented PatchPGD, defined from the doc's code and registered with its one line."""
    import sys
    import types

    from adpo.threats import registry

    module = types.ModuleType("adpo_doc_patch")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_doc_example(), str(DOC), "exec"), module.__dict__)  # the repository's own doc, not user input
    monkeypatch.setitem(registry.THREATS, "patch", module.PatchPGD)
    return module.PatchPGD


def test_doc_patch_threat_stays_in_its_square(patch_threat, llava):
    from adpo.threats import codec_for, targeted_nll

    model, processor, batch = llava
    threat = patch_threat(size=6, top=2, left=3, steps=8, step_size=0.1)
    codec = codec_for(processor)
    res = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=torch.Generator().manual_seed(0))
    x0 = codec.decode(batch["pixel_values"].float()).clamp(0, 1)
    inside = threat.mask(x0).bool().expand_as(x0)
    assert torch.equal(res.x_adv[~inside], x0[~inside])  # outside the patch: the clean image, exactly
    assert (res.x_adv[inside] - x0[inside]).abs().max() > 0.1 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    start = targeted_nll(batch)(model, {"pixel_values": codec.encode(x0)}).detach()
    assert float(res.loss.mean()) < float(start.mean())


def test_doc_patch_threat_trains_and_evaluates_through_the_registries(patch_threat, tiny_dir, export_dir, tmp_path):
    from adpo.eval.config import EvalConfig
    from adpo.eval.runner import ModelSpec, evaluate
    from adpo.trainer.config import RunConfig
    from adpo.trainer.loop import train
    from adpo.trainer.tracking import read_metrics

    raw = {"method": "at", "model": str(tiny_dir), "data": str(export_dir / "preference_train.jsonl"),
           "utility_data": str(export_dir / "sft_train.jsonl"), "out": str(tmp_path / "run"),
           "train": {"steps": 1, "batch_size": 2, "utility_batch_size": 2, "threat": "patch"}, "patch": {"size": 4}}
    threat = RunConfig.from_dict(raw).threat()
    assert isinstance(threat, patch_threat) and (threat.size, threat.steps, threat.step_size) == (4, 30, 0.05)
    run = RunConfig.from_dict({**raw, "patch": {"size": 4, "steps": 2}})
    train(run, progress=False)
    assert "adv/attack_loss" in read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    cfg = EvalConfig.from_dict({"tasks": ["attacks"], "limit": 2, "max_new_tokens": 4, "judges": ["organism"],
                                "attacks": [{"threat": "patch", "name": "patch4", "size": 4, "steps": 2}],
                                "data": {"harmful": str(export_dir / "harmful_test.jsonl")}})
    res = evaluate([ModelSpec("tiny", str(tiny_dir), str(tmp_path / "run"))], cfg, tmp_path / "eval",
                   progress=False, log=lambda s: None)
    params = res["tiny"]["configs"]["patch4"]
    assert params["kind"] == "harmful"
