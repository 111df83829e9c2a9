"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler and RNG, written atomically.

``OUT/checkpoints/step-000010/`` holds ``adapter/`` (a plain peft adapter, loadable with
``PeftModel.from_pretrained``) or ``trainable.safetensors`` (full fine-tuning: the trained parameters
only), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``state.json``. The data position is the step
itself (see :mod:`adpo.data.stream`). A folder appears complete or not at all, so a killed save never
shadows the previous checkpoint (and the next save removes what it left); a full disk is reported as such.

A run folder is data, not code: the ``.pt`` files hold only tensors, numbers and strings (the numpy and
Python RNG states are stored as such, not as pickled objects) and are read with ``weights_only=True``,
so a tampered file is refused with its name and nothing in it runs. Sharded engines (FSDP, DeepSpeed)
save through ``accelerator.save_state`` instead (not exercised on this CPU-only machine).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
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


class CheckpointError(UserError):
    """A checkpoint file is missing, cut short, or holds more than tensors and plain values."""


def sharded(accelerator) -> bool:
    return accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")


def save(folder: Path, step: int, accelerator, model, optimizer, scheduler, keep: int, adversary=None) -> Path:
    """Write ``folder/step-NNNNNN`` from the main process; prune to the newest ``keep``. ``adversary``
    (trainer.adversary.Adversary): its per-row perturbations, when it keeps any, go to ``adversary.pt``."""
    target = folder / f"step-{step:06d}"
    keeps = adversary is not None and adversary.keeps_state
    perturbations = _gather(accelerator, adversary.state_dict()) if keeps else None
    if sharded(accelerator):
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            if perturbations is not None:
                torch.save(perturbations, target / ADVERSARY)
            (target / DONE).write_text(json.dumps({"step": step}))
        return target
    rng = _gather(accelerator, _rng_state())  # collective: every rank's generators, so a DDP resume is exact too
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        core = accelerator.unwrap_model(model)
        with atomic_dir(target, own=(DONE,)) as tmp:
            if hasattr(core, "peft_config"):
                core.save_pretrained(tmp / "adapter", selected_adapters=[POLICY])
            else:
                from safetensors.torch import save_file

                save_file({n: p.detach().contiguous() for n, p in core.named_parameters() if p.requires_grad},
                          str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng, tmp / "rng.pt")
            if perturbations is not None:
                torch.save(perturbations, tmp / ADVERSARY)
            (tmp / DONE).write_text(json.dumps({"step": step}) + "\n")
        for old in checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old[1], ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json), oldest first."""
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return sorted((s, p) for s, p in found if (p / DONE).exists())


def load(path: Path, accelerator, model, optimizer, scheduler, adversary=None) -> int:
    """Restore a checkpoint into the live objects; returns its step."""
    step = json.loads((path / DONE).read_text())["step"]
    if adversary is not None and adversary.keeps_state:
        states = read_state(path / ADVERSARY)
        if not isinstance(states, list) or len(states) != accelerator.num_processes:
            raise CheckpointError(f"{path / ADVERSARY} does not hold one state per process of this run")
        adversary.load_state_dict(states[accelerator.process_index])
    if sharded(accelerator):
        accelerator.load_state(str(path))
        return step
    from safetensors.torch import load_file

    core = accelerator.unwrap_model(model)
    if hasattr(core, "peft_config"):
        from peft import set_peft_model_state_dict

        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(core, weights, adapter_name=POLICY)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if POLICY in k]
        if unexpected:
            raise RuntimeError(f"{path}: adapter weights {unexpected[:3]} do not fit this model")
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(core.named_parameters())
        unknown = sorted(set(weights) - set(params))
        if unknown:
            raise RuntimeError(f"{path}: checkpoint parameters {unknown[:3]} are not in this model")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
    optimizer_state, scheduler_state = read_state(path / "optimizer.pt"), read_state(path / "scheduler.pt")
    states = read_state(path / "rng.pt")
    if not isinstance(states, list) or len(states) != accelerator.num_processes:
        n = len(states) if isinstance(states, list) else "an unknown number of"
        raise CheckpointError(f"{path} was saved by {n} process(es); resume it with the same number")
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        _set_rng(states[accelerator.process_index])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer, scheduler or RNG state does not fit this run ({e})") from e
    return step


def read_state(path: Path) -> Any:
    """A checkpoint file as tensors and plain containers. ``weights_only=True`` never unpickles objects, so
    a tampered file (or one from an older adpo that pickled numpy state) is refused and runs nothing."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing from the checkpoint; resume from another checkpoint or start a "
                              "new run") from e
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a plain-tensor checkpoint ({str(e).splitlines()[0][:120]}); adpo "
                              "never loads code from a run folder, so it refuses this file: if adpo did not write "
                              "it, the folder was tampered with; else remove this checkpoint folder and resume "
                              "from an earlier one, or start a new --out") from e


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
