import dataclasses
import hashlib
import json

import pytest
import torch

from adpo.organism.build import ModelConfig
from adpo.organism.pretrain import (
    MARKER,
    ORGANISM_VERSION,
    QUALITY_TARGETS,
    PretrainConfig,
    evaluation_sets,
    fingerprint,
    missed_targets,
    pretrain,
    train_base,
)
from adpo.organism.world import World, WorldConfig

TINY = ModelConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=2, text_intermediate=64,
                   text_heads=2, vision_heads=2)
FEW = PretrainConfig(vision_steps=2, vision_batch_size=8, steps=4, batch_size=8, warmup=1, eval_n=4, quality_rounds=0)


def test_tiny_pretrain_lowers_the_loss(processor):
    world = World(WorldConfig())
    cfg = PretrainConfig(vision_steps=0, steps=40, batch_size=16, lr=3e-3, warmup=2, quality_rounds=0)
    _, hist, _ = train_base(world, processor, TINY, cfg, log=lambda s: None, progress=False)
    assert sum(hist[-5:]) / 5 < 0.75 * sum(hist[:3]) / 3


def test_pretrain_writes_contract_and_is_cached(tmp_path):
    m = pretrain(tmp_path, WorldConfig(), TINY, FEW, log=lambda s: None, progress=False)
    for key in ("utility_accuracy", "compliance_rate_image_harm", "refusal_rate_text_harm", "over_refusal_rate"):
        assert 0.0 <= m[key] <= 1.0
    assert m["seconds"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["fingerprint"] == m["fingerprint"]
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    AutoProcessor.from_pretrained(tmp_path / "model")
    logs = []
    again = pretrain(tmp_path, WorldConfig(), TINY, FEW, log=logs.append, progress=False)
    assert again["seconds"] == m["seconds"] and "cached" in logs[0]


def test_model_of_other_options_is_rebuilt_and_a_foreign_one_refused(tmp_path):
    from adpo.utils.io import OutputExists

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{ not ours")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(OutputExists, match="model exists and is not an earlier output of adpo"):
        pretrain(tmp_path, WorldConfig(), TINY, FEW, log=lambda s: None, progress=False)
    assert (tmp_path / "model" / "config.json").read_text() == "{ not ours"  # untouched
    (tmp_path / "model" / MARKER).write_text(json.dumps({"fingerprint": "other options"}))
    logs = []
    m = pretrain(tmp_path, WorldConfig(), TINY, FEW, log=logs.append, progress=False)
    assert any("rebuilding" in line for line in logs)
    marker = json.loads((tmp_path / "model" / MARKER).read_text())
    assert marker["fingerprint"] == m["fingerprint"] == fingerprint(WorldConfig(), TINY, FEW)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_other_options_other_fingerprint():
    assert fingerprint(WorldConfig(seed=1), TINY, FEW) != fingerprint(WorldConfig(seed=0), TINY, FEW)


def test_unwritable_output(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        pretrain(f / "x", WorldConfig(), TINY, FEW, log=lambda s: None, progress=False)


def test_a_later_option_at_its_neutral_value_keeps_earlier_fingerprints():
    """Organisms cached before ``position_questions`` and the remedial rounds existed stay cached while both
    are off (the same stream); any other value is another organism."""
    before = {k: v for k, v in dataclasses.asdict(FEW).items()
              if k != "position_questions" and not k.startswith("quality_")}
    blob = json.dumps({"v": ORGANISM_VERSION, "world": WorldConfig().to_dict(), "model": TINY.to_dict(),
                       "train": before}, sort_keys=True)
    assert fingerprint(WorldConfig(), TINY, FEW) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    other = dataclasses.replace(FEW, position_questions=0.15)
    assert fingerprint(WorldConfig(), TINY, other) != fingerprint(WorldConfig(), TINY, FEW)
    rounds_on = dataclasses.replace(FEW, quality_rounds=2)
    assert fingerprint(WorldConfig(), TINY, rounds_on) != fingerprint(WorldConfig(), TINY, FEW)
    # without rounds, their settings are not part of what was built
    assert fingerprint(WorldConfig(), TINY, dataclasses.replace(FEW, quality_steps=7)) == fingerprint(
        WorldConfig(), TINY, FEW)


REMEDIAL = PretrainConfig(vision_steps=0, steps=4, batch_size=8, warmup=1, eval_n=4, quality_rounds=2,
                          quality_steps=3)


def test_remedial_rounds_train_more_while_validation_misses_the_targets(processor):
    """A tiny 4-step base misses every target on validation: both rounds run (3 steps each), each check
    recorded, the last one after the last round."""
    _, hist, rounds = train_base(World(WorldConfig()), processor, TINY, REMEDIAL, log=lambda s: None,
                                 progress=False)
    assert len(hist) == 4 + 2 * 3
    assert len(rounds) == 3 and all(r["missed"] for r in rounds)
    assert set(rounds[0]["validation"]) == set(QUALITY_TARGETS)


def test_a_base_that_meets_the_targets_is_not_touched(processor, monkeypatch):
    """Validation passes (targets below any rate): no remedial step, and the weights are the ones without rounds."""
    monkeypatch.setattr("adpo.organism.pretrain.QUALITY_TARGETS", dict.fromkeys(QUALITY_TARGETS, -1.0))
    world = World(WorldConfig())
    checked, hist, rounds = train_base(world, processor, TINY, REMEDIAL, log=lambda s: None, progress=False)
    plain, _, none = train_base(world, processor, TINY, dataclasses.replace(REMEDIAL, quality_rounds=0),
                                log=lambda s: None, progress=False)
    assert len(hist) == 4 and none == [] and rounds == [{"validation": rounds[0]["validation"], "missed": []}]
    a, b = checked.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_validation_and_test_sets_differ():
    """The remedial decision never sees the reported (test) rows: other intents, other images."""
    world = World(WorldConfig())
    test, val = evaluation_sets(world, 8, "test"), evaluation_sets(world, 8, "validation")
    assert {s.meta["intent"] for s in val["text_harm"]} <= set(world.harm_intents["validation"])
    assert not {s.prompt for s in val["text_harm"]} & {s.prompt for s in test["text_harm"]}


def test_validation_must_clear_the_targets_by_the_margin():
    """A validation estimate at the edge (seed 7: 0.953 on validation, 0.941 on test) is not a pass."""
    edge = {"utility_accuracy": 0.953, "compliance_rate_image_harm": 1.0, "refusal_rate_text_harm": 1.0}
    assert missed_targets(edge) == []
    assert missed_targets(edge, PretrainConfig().quality_margin) == ["utility_accuracy"]
