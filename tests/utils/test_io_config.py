import json

import pytest

from adpo.utils.config import ConfigError, apply_overrides, build, load_yaml
from adpo.utils.io import atomic_dir, ensure_writable_dir, write_json


def test_write_json_is_atomic(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(p, {"a": Boom()})
    assert json.loads(p.read_text()) == {"a": 1}  # old content survives a failed write
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]  # no temp file left


def test_atomic_dir_removes_partial_output(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target, own=("done",)) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_dir_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PermissionError, match=str(f)):
        ensure_writable_dir(f / "sub")


def test_overrides_and_unknown_keys(tmp_path):
    from adpo.organism.pretrain import PretrainConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrain:\n  steps: 5\n")
    raw = apply_overrides(load_yaml(cfg), ["pretrain.lr=1e-3", "world.trigger_amplitude=[0.1, 0.5]"])
    assert raw == {"pretrain": {"steps": 5, "lr": 1e-3}, "world": {"trigger_amplitude": [0.1, 0.5]}}
    assert build(PretrainConfig, raw["pretrain"], "pretrain").steps == 5
    with pytest.raises(ConfigError, match="unknown option.*'stepz'.*section 'pretrain'"):
        build(PretrainConfig, {"stepz": 1}, "pretrain")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])
