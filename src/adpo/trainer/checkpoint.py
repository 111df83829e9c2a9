"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler and RNG, written atomically.

``OUT/checkpoints/step-000010/`` holds ``adapter/`` (a plain peft adapter, loadable with
``PeftModel.from_pretrained``) or ``trainable.safetensors`` (full fine-tuning: the trained parameters
only), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``state.json``. The data position is the step
itself (see :mod:`adpo.data.stream`). A folder appears complete or not at all, so a killed save never
shadows the previous checkpoint (and the next save removes what it left); a full disk is reported as such.

A run folder is data, not code: the ``.pt`` files hold only tensors, numbers and strings (the numpy and
Python RNG states are stored as such, not as pickled objects) and are read with ``weights_only=True``,
so a tampered file is refused with its name and nothing in it runs.

Under FSDP the trainable weights and the optimizer are sharded across ranks, so instead of ``adapter/``
(or ``trainable.safetensors``) and ``optimizer.pt`` the checkpoint holds ``sharded/``: a
``torch.distributed.checkpoint`` folder (one ``__<rank>_0.distcp`` file per rank with that rank's shards,
and ``.metadata``) of ``get_state_dict``'s trainable weights and optimizer state; every rank writes its own
shards into the folder the main process renames into place once all are written, and a resume loads each
rank's shards back with ``set_state_dict`` (the same number of processes: the RNG states are per rank).
torch reads ``.metadata`` and the non-tensor entries with pickle; adpo reads them without running anything
from them (:mod:`adpo.trainer.shards`). DeepSpeed saves through ``accelerator.save_state`` (not exercised
on this CPU-only machine).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.adapters import POLICY
from ..utils.errors import UserError
from ..utils.io import atomic_dir

PATTERN = re.compile(r"step-(\d+)$")
DONE = "state.json"  # written last: a checkpoint folder without it is not one
ADVERSARY = "adversary.pt"  # the training adversary's per-row perturbations (persistent / free training)
SHARDED = "sharded"  # FSDP: the torch.distributed.checkpoint folder of every rank's shards (trainer/shards.py)


class CheckpointError(UserError):
    """A checkpoint file is missing, cut short, or holds more than tensors and plain values."""


def engine(accelerator) -> str:
    """How a checkpoint is written: ``FSDP`` (every rank writes its shards: :mod:`.shards`), ``DEEPSPEED``
    (``accelerator.save_state``), anything else (``NO``, ``MULTI_CPU``, ``MULTI_GPU``: every rank holds every
    weight, the main process writes them)."""
    return accelerator.distributed_type.name


def full_state(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The model's whole state dict on the main process, gathered from the shards (collective: every rank
    calls it), for ``save_trained``; None where every rank holds every weight. A LoRA run gathers only the
    trainable weights (the adapter), not the frozen base."""
    if engine(accelerator) == "DEEPSPEED":
        return accelerator.get_state_dict(model)
    if engine(accelerator) != "FSDP":
        return None
    from . import shards

    return shards.full_state(model, lora=hasattr(accelerator.unwrap_model(model), "peft_config"))


def save(folder: Path, step: int, accelerator, model, optimizer, scheduler, keep: int, adversary=None) -> Path:
    """Write ``folder/step-NNNNNN`` (collective: every rank calls it; under FSDP every rank writes its shards,
    else the main process writes everything); prune to the newest ``keep``. ``adversary``
    (trainer.adversary.Adversary): its per-row perturbations, when it keeps any, go to ``adversary.pt``."""
    target = folder / f"step-{step:06d}"
    keeps = adversary is not None and adversary.keeps_state
    perturbations = _gather(accelerator, adversary.state_dict()) if keeps else None
    if engine(accelerator) == "DEEPSPEED":
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            if perturbations is not None:
                torch.save(perturbations, target / ADVERSARY)
            (target / DONE).write_text(json.dumps({"step": step}))
        return target
    rng = _gather(accelerator, _rng_state())  # collective: every rank's generators, so a DDP resume is exact too
    fsdp = engine(accelerator) == "FSDP"
    with _staging(accelerator, target) as tmp:
        if fsdp:
            from . import shards

            shards.save(tmp / SHARDED, model, optimizer)
        if accelerator.is_main_process:
            if not fsdp:
                _save_weights(tmp, accelerator.unwrap_model(model))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng, tmp / "rng.pt")
            if perturbations is not None:
                torch.save(perturbations, tmp / ADVERSARY)
            (tmp / DONE).write_text(json.dumps({"step": step}) + "\n")
    if accelerator.is_main_process:
        for old in checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old[1], ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


@contextmanager
def _staging(accelerator, target: Path) -> Iterator[Path]:
    """The folder a checkpoint is written into, on every rank: the main process's temp folder, which replaces
    ``target`` when the block ends there (``atomic_dir``: a killed save leaves no half checkpoint); its path
    is broadcast to the other ranks (collective)."""
    if not accelerator.is_main_process:
        yield Path(_from_main(accelerator, None))
        return
    with atomic_dir(target, own=(DONE,)) as tmp:
        _from_main(accelerator, str(tmp))
        yield tmp


def _from_main(accelerator, value: Any) -> Any:
    """The main process's ``value`` on every rank (collective)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _save_weights(folder: Path, core) -> None:
    """The trainable weights of an unsharded model: a plain peft adapter, or the trained parameters."""
    if hasattr(core, "peft_config"):
        core.save_pretrained(folder / "adapter", selected_adapters=[POLICY])
    else:
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in core.named_parameters() if p.requires_grad},
                  str(folder / "trainable.safetensors"))


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json), oldest first."""
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted((s, p) for s, p in found if (p / DONE).exists())


def load(path: Path, accelerator, model, optimizer, scheduler, adversary=None) -> int:
    """Restore a checkpoint into the live objects (collective under FSDP); returns its step."""
    step = json.loads((path / DONE).read_text())["step"]
    if adversary is not None and adversary.keeps_state:
        states = read_state(path / ADVERSARY)
        if not isinstance(states, list) or len(states) != accelerator.num_processes:
            raise CheckpointError(f"{path / ADVERSARY} does not hold one state per process of this run")
        adversary.load_state_dict(states[accelerator.process_index])
    if engine(accelerator) == "DEEPSPEED":
        accelerator.load_state(str(path))
        return step
    states = read_state(path / "rng.pt")
    if not isinstance(states, list) or len(states) != accelerator.num_processes:
        n = len(states) if isinstance(states, list) else "an unknown number of"
        raise CheckpointError(f"{path} was saved by {n} process(es); resume it with the same number")
    scheduler_state = read_state(path / "scheduler.pt")
    if engine(accelerator) == "FSDP":
        _load_shards(path / SHARDED, model, optimizer)
        optimizer_state = None
    else:
        _load_weights(path, accelerator.unwrap_model(model))
        optimizer_state = read_state(path / "optimizer.pt")
    try:
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        _set_rng(states[accelerator.process_index])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer, scheduler or RNG state does not fit this run ({e})") from e
    return step


def _load_weights(path: Path, core) -> None:
    """The trainable weights of an unsharded model, from :func:`_save_weights`'s files."""
    from safetensors.torch import load_file

    if hasattr(core, "peft_config"):
        from peft import set_peft_model_state_dict

        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(core, weights, adapter_name=POLICY)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if POLICY in k]
        if unexpected:
            raise RuntimeError(f"{path}: adapter weights {unexpected[:3]} do not fit this model")
        return
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(core.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise RuntimeError(f"{path}: checkpoint parameters {unknown[:3]} are not in this model")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)


def _load_shards(folder: Path, model, optimizer) -> None:
    """:func:`shards.load`, its failures as one line naming the folder."""
    from . import shards

    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder}: missing from the checkpoint (or cut short); resume from another "
                              "checkpoint or start a new run")
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        shards.load(folder, model, optimizer)
    except (Exception, CheckpointException) as e:  # torch reports every rank's failure in one CheckpointException
        if shards.REFUSED in str(e):
            raise _refused(folder, e) from e
        raise CheckpointError(f"{folder}: does not fit this run ({str(e).splitlines()[0][:200]})") from e


def read_state(path: Path) -> Any:
    """A checkpoint file as tensors and plain containers. ``weights_only=True`` never unpickles objects, so
    a tampered file (or one from an older adpo that pickled numpy state) is refused and runs nothing."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing from the checkpoint; resume from another checkpoint or start a "
                              "new run") from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise _refused(path, e) from e


def _refused(path: Path, e: BaseException) -> CheckpointError:
    text, mark = str(e), "not a plain-tensor checkpoint ("
    # a refusal from trainer/shards.py comes inside torch's report of every rank's failure: keep its reason
    reason = text.split(mark)[-1].splitlines()[0].split("); ")[0].removesuffix(")") if mark in text else \
        text.splitlines()[0]
    reason = reason[:120]
    return CheckpointError(f"{path}: not a plain-tensor checkpoint ({reason}); adpo never loads code from a run "
                           "folder, so it refuses this file: if adpo did not write it, the folder was tampered "
                           "with; else remove this checkpoint folder and resume from an earlier one, or start a "
                           "new --out")


def _gather(accelerator, state: Any) -> list[Any]:
    """Every rank's ``state``, in rank order (collective)."""
    if accelerator.num_processes == 1:
        return [state]
    from accelerate.utils import gather_object

    return gather_object([state])


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss": py_gauss}}
    return state


def _set_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
