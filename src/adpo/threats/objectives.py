"""What an attack minimises: per-sample losses computed by calling the model with perturbed inputs.

An objective is ``objective(model, overrides) -> (B,)``: it calls the model with ``overrides`` (e.g. the
perturbed ``pixel_values``) merged into its own text batch(es). Lower is a stronger attack.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..objectives.logps import model_logps

Objective = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
MODEL_KEYS_EXCLUDED = ("labels", "prompt_mask")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``model(...)`` in a batch (without ``labels`` and ``prompt_mask``)."""
    return {k: v for k, v in batch.items() if k not in MODEL_KEYS_EXCLUDED}


def _logps(model: nn.Module, batch: dict[str, torch.Tensor], overrides: dict[str, torch.Tensor],
           chunk: int) -> torch.Tensor:
    lp, _ = model_logps(model, {**model_inputs(batch), **overrides}, batch["labels"], chunk)
    return lp.sum(-1)


def targeted_nll(batch: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Minimise -log p(target | perturbed input): ``batch['labels']`` holds the target response.

    ``chunk``: response tokens per log-prob chunk (:func:`adpo.objectives.logps.model_logps`; 0 = full logits).
    """
    def objective(model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        return -_logps(model, batch, overrides, chunk)
    return objective


def dpo_margin(chosen: dict[str, torch.Tensor], rejected: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Maximise log pi(rejected) - log pi(chosen) (the DPO loss's policy term), i.e. minimise its negative.

    Both batches share the perturbation (one image per pair, as in the paper's code).
    """
    def objective(model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        return _logps(model, chosen, overrides, chunk) - _logps(model, rejected, overrides, chunk)
    return objective
