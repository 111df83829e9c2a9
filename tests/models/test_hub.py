"""Hub ids where a model folder is expected: a cached id loads offline, an uncached one is one clear line, and
the CLI leaves HF_HUB_OFFLINE to its caller (tests, demo and CI set it)."""

from __future__ import annotations

import shutil

import pytest

from adpo.cli import main


@pytest.fixture()
def hub_cache(tmp_path, tiny_dir, monkeypatch):
    """The tiny organism as the hub cache holds a downloaded repo ``adpo-test/tiny`` (refs/main -> snapshot)."""
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--adpo-test--tiny"
    shutil.copytree(tiny_dir, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo / "snapshots" / "0123abc"


def test_cached_hub_id_loads_offline(hub_cache, capsys):
    from adpo.models.adapters import load_base, weights_fingerprint
    from adpo.models.hub import resolve_model

    assert resolve_model("adpo-test/tiny") == hub_cache
    model, _ = load_base("adpo-test/tiny")
    assert model.config.model_type == "llava"
    assert weights_fingerprint("adpo-test/tiny") == weights_fingerprint(hub_cache)
    assert main(["inspect", "--model", "adpo-test/tiny"]) == 0


def test_uncached_hub_id_offline_is_one_line(hub_cache, capsys):
    assert main(["inspect", "--model", "nobody-here/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adpo: error: model nobody-here/no-such-model") and "HF_HUB_OFFLINE=1" in err
    assert err.count("\n") == 1


def test_cli_does_not_force_offline(monkeypatch, capsys):
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["config", "--method", "dpo"]) == 0
    assert "HF_HUB_OFFLINE" not in os.environ


def test_push_to_hub_offline_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["train", "--method", "dpo", "--model", "m", "--data", "d", "--out", str(out),
                 "--push-to-hub", "me/adpo-run"]) == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err and not out.exists()


def test_hub_dataset_name_offline_is_one_line(monkeypatch):
    from adpo.data.formats import DataError, load_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="nobody-here/no-such-data: .*HF_HUB_OFFLINE=1 forbids"):
        load_rows("nobody-here/no-such-data", "pairs")
