import dataclasses
import hashlib
import json

import pytest

from adpo.organism.build import ModelConfig
from adpo.organism.pretrain import MARKER, ORGANISM_VERSION, PretrainConfig, fingerprint, pretrain, train_base
from adpo.organism.world import World, WorldConfig

TINY = ModelConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=2, text_intermediate=64,
                   text_heads=2, vision_heads=2)
FEW = PretrainConfig(vision_steps=2, vision_batch_size=8, steps=4, batch_size=8, warmup=1, eval_n=4)


def test_tiny_pretrain_lowers_the_loss(processor):
    world = World(WorldConfig())
    cfg = PretrainConfig(vision_steps=0, steps=40, batch_size=16, lr=3e-3, warmup=2)
    _, hist = train_base(world, processor, TINY, cfg, log=lambda s: None, progress=False)
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
    """Organisms cached before ``position_questions`` existed stay cached while it is 0 (the same stream);
    any other value is another organism."""
    before = {k: v for k, v in dataclasses.asdict(FEW).items() if k != "position_questions"}
    blob = json.dumps({"v": ORGANISM_VERSION, "world": WorldConfig().to_dict(), "model": TINY.to_dict(),
                       "train": before}, sort_keys=True)
    assert fingerprint(WorldConfig(), TINY, FEW) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    other = dataclasses.replace(FEW, position_questions=0.15)
    assert fingerprint(WorldConfig(), TINY, other) != fingerprint(WorldConfig(), TINY, FEW)
