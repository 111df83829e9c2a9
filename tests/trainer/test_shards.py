"""FSDP checkpoint files (trainer/shards.py) in one process: the trainable weights and optimizer state come
back exactly, the frozen weights are not stored, and a tampered ``.metadata`` or non-tensor entry is
refused with one line while nothing in it runs (torch's own reader would unpickle both)."""

from __future__ import annotations

import pickle

import pytest
import torch

from adpo.trainer import checkpoint, shards

# one process without a process group: what DCP does then is what these tests check
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class RunsCode:
    """Unpickling it calls ``open(sentinel, "w")``."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return open, (self.sentinel, "w")


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen "base"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(3, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_sharded_checkpoint_round_trip_restores_trainable_weights_and_optimizer(tmp_path):
    model, optimizer = _model_and_optimizer()
    shards.save(tmp_path / "sharded", model, optimizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    stored = set(shards.SafeReader(str(tmp_path / "sharded")).read_metadata().state_dict_metadata)
    assert "model.1.weight" in stored and "model.0.weight" not in stored  # the frozen weights are not stored

    fresh, fresh_opt = _model_and_optimizer()
    with torch.no_grad():
        fresh[1].weight.add_(1.0)
    fresh_opt.state_dict()["state"][0]["exp_avg"].add_(1.0)
    checkpoint._load_shards(tmp_path / "sharded", fresh, fresh_opt)
    assert all(torch.equal(fresh.state_dict()[k], saved[k]) for k in saved)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], moments)


def test_tampered_metadata_is_refused_and_runs_nothing(tmp_path):
    model, optimizer = _model_and_optimizer()
    shards.save(tmp_path / "sharded", model, optimizer)
    sentinel = tmp_path / "code-ran"
    (tmp_path / "sharded" / ".metadata").write_bytes(pickle.dumps(RunsCode(sentinel)))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint._load_shards(tmp_path / "sharded", model, optimizer)
    assert str(e.value).startswith(f"{tmp_path / 'sharded'}: not a plain-tensor checkpoint (.metadata names "
                                   "io.open); adpo never loads code")
    assert "adpo never loads code from a run folder" in str(e.value) and "\n" not in str(e.value)
    assert not sentinel.exists()


def test_tampered_non_tensor_entry_is_refused_and_runs_nothing(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    sentinel = tmp_path / "code-ran"
    dcp.save({"w": torch.ones(2), "lr": RunsCode(sentinel)}, storage_writer=dcp.FileSystemWriter(str(tmp_path)))
    assert not sentinel.exists()
    with pytest.raises(CheckpointException, match=shards.REFUSED):
        dcp.load({"w": torch.zeros(2), "lr": 0.0}, storage_reader=shards.SafeReader(str(tmp_path)),
                 planner=shards.SafePlanner())
    assert not sentinel.exists()


def test_missing_shards_folder_is_one_line(tmp_path):
    model, optimizer = _model_and_optimizer()
    with pytest.raises(checkpoint.CheckpointError, match="sharded: missing from the checkpoint"):
        checkpoint._load_shards(tmp_path / "sharded", model, optimizer)
