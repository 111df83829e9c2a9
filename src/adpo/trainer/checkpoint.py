"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler and RNG, written atomically.

``OUT/checkpoints/step-000010/`` holds ``adapter/`` (a plain peft adapter, loadable with
``PeftModel.from_pretrained``) or ``trainable.safetensors`` (full fine-tuning: the trained parameters
only), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and ``state.json``. The data position is the step
itself (see :mod:`adpo.data.stream`). A folder appears complete or not at all, so a killed save never
shadows the previous checkpoint (and the next save removes what it left); a full disk is reported as such.
Sharded engines (FSDP, DeepSpeed) save through ``accelerator.save_state`` instead (not exercised on this
CPU-only machine).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.adapters import POLICY
from ..utils.io import atomic_dir

PATTERN = re.compile(r"step-(\d+)$")
DONE = "state.json"  # written last: a checkpoint folder without it is not one


def sharded(accelerator) -> bool:
    return accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")


def save(folder: Path, step: int, accelerator, model, optimizer, scheduler, keep: int) -> Path:
    """Write ``folder/step-NNNNNN`` from the main process; prune to the newest ``keep``."""
    target = folder / f"step-{step:06d}"
    if sharded(accelerator):
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            (target / DONE).write_text(json.dumps({"step": step}))
        return target
    rng = _gather_rng(accelerator)  # collective: every rank's generators, so a DDP resume is exact too
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


def load(path: Path, accelerator, model, optimizer, scheduler) -> int:
    """Restore a checkpoint into the live objects; returns its step."""
    step = json.loads((path / DONE).read_text())["step"]
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
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    states: list[dict[str, Any]] = torch.load(path / "rng.pt", weights_only=False)
    if len(states) != accelerator.num_processes:
        raise RuntimeError(f"{path} was saved by {len(states)} process(es); resume it with the same number")
    rng = states[accelerator.process_index]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return step


def _gather_rng(accelerator) -> list[dict[str, Any]]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    if accelerator.num_processes == 1:
        return [state]
    from accelerate.utils import gather_object

    return gather_object([state])
