"""FSDP checkpoints: every rank's shards of the trainable weights and the optimizer state, through
``torch.distributed.checkpoint`` (DCP), read back without running anything from the files.

``get_state_dict`` gives the trainable weights and the optimizer state keyed by parameter name, each
tensor a DTensor holding this rank's shard; ``dcp.save`` has every rank write its own shards
(``__<rank>_0.distcp``) and the coordinator write ``.metadata`` (which shard lies where) once all are
written; ``dcp.load`` reads each rank's shards into the live DTensors and ``set_state_dict`` installs
them. The frozen base is not saved: it is reloaded from the model folder.

torch reads ``.metadata`` with ``pickle.load`` and the non-tensor entries (the optimizer's
hyper-parameters) with ``torch.load(weights_only=False)``, either of which runs code a tampered file
names. :class:`SafeReader` unpickles ``.metadata`` with :class:`Records`, which builds only DCP's own
record types, and :class:`SafePlanner` loads the entries with ``weights_only=True``: a tampered file is
refused (:data:`REFUSED` in the error) and nothing in it runs.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
import sys
from collections import OrderedDict
from pathlib import Path, PosixPath, WindowsPath
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.serialization import _get_layout

REFUSED = "not a plain-tensor checkpoint"  # in every refusal; checkpoint.py turns it into its one-line error


class Records(pickle.Unpickler):
    """An unpickler for DCP's ``.metadata`` that builds only the record classes of DCP's own modules (its
    dataclasses and enums), torch's dtypes, memory formats and ``Size``, and the few plain helpers a saved
    ``.metadata`` names (the pickle documentation's "restricting globals"): any other global a file names
    is refused, not imported."""

    MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
               "torch.distributed.checkpoint.planner", "torch.distributed.checkpoint.storage")
    # torch.layout pickles as _get_layout("torch.strided") (a lookup in torch's own layouts); the storage
    # record's checkpoint_id is the folder's path
    PLAIN = {("collections", "OrderedDict"): OrderedDict, ("pathlib", "PosixPath"): PosixPath,
             ("pathlib", "WindowsPath"): WindowsPath, ("torch.serialization", "_get_layout"): _get_layout}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.PLAIN:
            return self.PLAIN[module, name]
        found = getattr(sys.modules.get(module), name, None) if module in (*self.MODULES, "torch") else None
        if module in self.MODULES and isinstance(found, type) and found.__module__ == module and \
                (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):  # records, not readers
            return found
        if module == "torch" and (found is torch.Size or isinstance(found, (torch.dtype, torch.memory_format))):
            return found
        raise pickle.UnpicklingError(f"{REFUSED} (.metadata names {module}.{name})")


class SafeReader(dcp.FileSystemReader):
    """torch's file reader, with ``.metadata`` read by :class:`Records` instead of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            try:
                metadata = Records(f).load()
            except (AttributeError, EOFError, ValueError, TypeError, IndexError) as e:
                raise pickle.UnpicklingError(f"{REFUSED} (.metadata: {e})") from e
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{REFUSED} (.metadata holds a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:  # as torch's own reader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """torch's load planner, with the non-tensor entries checked by ``torch.load(weights_only=True)`` before
    torch's own ``load_bytes`` reads the same bytes."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise pickle.UnpicklingError(f"{REFUSED} ({read_item.dest_index.fqn}: "
                                         f"{str(e).splitlines()[0][:120]})") from e
        value.seek(0)
        super().load_bytes(read_item, value)


def inner(optimizer):
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (torch's state-dict functions read
    its ``state`` and ``param_groups`` directly)."""
    return getattr(optimizer, "optimizer", optimizer)


def state(model, optimizer) -> dict[str, Any]:
    """This rank's shards of the trainable weights and of the optimizer state, keyed by parameter name."""
    weights, optim = get_state_dict(model, inner(optimizer), options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optimizer": optim}


def save(folder: Path, model, optimizer) -> None:
    """Every rank writes its shards into ``folder`` (collective); the coordinator writes ``.metadata`` last."""
    dcp.save(state(model, optimizer), storage_writer=dcp.FileSystemWriter(str(folder)))


def load(folder: Path, model, optimizer) -> None:
    """Every rank reads its shards from ``folder`` into the live model and optimizer (collective)."""
    live = state(model, optimizer)
    dcp.load(live, storage_reader=SafeReader(str(folder)), planner=SafePlanner())
    # strict=False: the frozen base is not in the checkpoint (dcp.load has already refused a missing key)
    set_state_dict(model, inner(optimizer), model_state_dict=live["model"], optim_state_dict=live["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))


def full_state(model, lora: bool) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on rank 0, gathered from every rank (collective); a LoRA run
    gathers the trainable weights only."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=lora))
