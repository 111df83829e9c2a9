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


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """The hub client as it is with the network on, pointed at a closed local port (nothing can leave the
    machine), with no token unless a test sets HF_TOKEN."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def test_push_to_hub_without_a_token_is_refused_before_any_work(online, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--model", "m", "--adapter", "a", "--out", str(out), "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adpo: error: --push-to-hub me/x: no hub token") and err.count("\n") == 1
    assert not out.exists()
    assert main(["export", "--model", "m", "--adapter", "a", "--out", str(out), "--push-to-hub", "not an id"]) == 2


def test_push_after_training_reaches_the_hub_client_and_a_failed_upload_is_one_line(
        online, tiny_dir, export_dir, tmp_path, monkeypatch, capsys):
    """The whole --push-to-hub path up to the network: training, the adapter with its card, huggingface_hub's
    create_repo (refused by the closed port); the folder it would upload is complete and loads."""
    import torch
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "run"
    assert main(["train", "--method", "dpo", "--model", str(tiny_dir), "--data",
                 str(export_dir / "preference_train.jsonl"), "--out", str(out), "--push-to-hub", "me/adpo-run",
                 "--quiet", "train.steps=2", "train.batch_size=4", "train.lr=5e-3"]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "adpo" in line]  # beside transformers' bars
    assert err.startswith("adpo: error: --push-to-hub me/adpo-run: the upload failed (ConnectError")
    folder = out / "adapter"
    assert f"{folder} is saved and complete, upload it later with `hf upload me/adpo-run {folder}`" in err
    # what upload_folder would send: the peft adapter, the processor and the model card, nothing else
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert not {p for p in files if p.startswith(".") or "optimizer" in p}
    front = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert front["base_model"] == str(tiny_dir) and front["library_name"] == "peft"
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, folder).eval()(input_ids=ids).logits
    assert not torch.allclose(plain, tuned, atol=1e-4)  # the trained adapter, not an empty one
