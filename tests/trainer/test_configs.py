"""The configs shipped in configs/ resolve (a typo there would only surface on a user's GPU)."""

from pathlib import Path

import pytest
import yaml

from adpo.trainer.config import RunConfig
from adpo.utils.config import load_yaml

ROOT = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["organism.yaml", "llava-1.5-7b.yaml"])
def test_training_configs_resolve(name):
    raw = load_yaml(ROOT / name) | {"method": "adpo", "model": "m", "data": "d", "out": "o", "reference": "r"}
    run = RunConfig.from_dict(raw)
    assert run.train.beta == 0.1


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_name_a_distributed_type(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")
