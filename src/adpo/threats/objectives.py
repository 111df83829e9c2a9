"""What an attack minimises: per-sample losses computed by calling the model with perturbed inputs.

An objective is ``objective(model, overrides) -> (B,)``: it calls the model with ``overrides`` (e.g. the
perturbed ``pixel_values``) merged into its own text batch(es). Lower is a stronger attack.

Four losses toward a target answer (an attacker's choice; an ensemble uses several, since a defence can
flatten one of them without being robust): the target's NLL, the NLL of its first tokens only, the margin
against the refusal, and a Carlini–Wagner margin on the token where target and refusal part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..objectives.logps import IGNORE, model_logps

Objective = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
MODEL_KEYS_EXCLUDED = ("labels", "prompt_mask")


def select_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``rows`` (a bool mask or indices) of a batch whose tensors all have one row per sample.

    Qwen2-VL's patch layout (``image_grid_thw``: pixel rows are patches, not samples) has no such rows."""
    if "image_grid_thw" in batch:
        raise ValueError("selecting samples of a batch needs one pixel row per sample; Qwen2-VL's patch layout "
                         "(image_grid_thw) has none")
    return {k: v[rows] for k, v in batch.items()}


class RowObjective:
    """An objective over row batches that can be restricted to some of its samples (:meth:`select`), so the
    attack loop's per-sample early stop stops spending passes on the samples already won."""

    def __init__(self, fn: Callable[..., torch.Tensor], *batches: dict[str, torch.Tensor]):
        self.fn, self.batches = fn, batches

    def __call__(self, model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(model, overrides, *self.batches)

    def select(self, rows: torch.Tensor) -> RowObjective:
        return RowObjective(self.fn, *(select_rows(b, rows) for b in self.batches))


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
    return RowObjective(lambda model, overrides, b: -_logps(model, b, overrides, chunk), batch)


def dpo_margin(chosen: dict[str, torch.Tensor], rejected: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Maximise log pi(rejected) - log pi(chosen) (the DPO loss's policy term), i.e. minimise its negative.

    Both batches share the perturbation (one image per pair, as in the paper's code).
    """
    return RowObjective(lambda model, overrides, c, r: _logps(model, c, overrides, chunk) - _logps(
        model, r, overrides, chunk), chosen, rejected)


def prefix_nll(batch: dict[str, torch.Tensor], tokens: int = 4, chunk: int = 0) -> Objective:
    """Minimise -log p(the first ``tokens`` target tokens): the attack only has to open the answer ("sure,
    here is"), after which a model's own continuation usually follows (GCG's observation)."""
    labels = batch["labels"].clone()
    labels[(labels != IGNORE).cumsum(1) > tokens] = IGNORE
    return targeted_nll({**batch, "labels": labels}, chunk)


def refusal_margin(target: dict[str, torch.Tensor], refusal: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Minimise log p(refusal) - log p(target): push the target up *and* the refusal down (both batches share
    the perturbation; the DPO margin with the refusal as the chosen answer)."""
    return dpo_margin(refusal, target, chunk)


def first_divergent(target: torch.Tensor, refusal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the logit position that predicts the first response token where the target and the refusal
    differ, and the target's token there: (positions (B,), tokens (B,)). Rows share the prompt, so response
    tokens are compared in order."""
    pos, tok = [], []
    for t, r in zip(target, refusal):
        tp, rp = (t != IGNORE).nonzero().flatten(), (r != IGNORE).nonzero().flatten()
        n = min(len(tp), len(rp))
        diff = (t[tp[:n]] != r[rp[:n]]).nonzero().flatten()
        j = int(diff[0]) if len(diff) else 0
        pos.append(int(tp[j]) - 1)  # logits[p] predict token p + 1
        tok.append(int(t[tp[j]]))
    return torch.tensor(pos), torch.tensor(tok)


def cw_first_token(target: dict[str, torch.Tensor], refusal: dict[str, torch.Tensor], kappa: float = 5.0
                   ) -> Objective:
    """Carlini–Wagner margin on the deciding token: ``max(max_{j≠t} z_j − z_t, −κ)`` at the first response
    position where the target and the refusal differ (the organism's "sure" vs "sorry"), ``z`` the logits
    given the shared prefix. Unlike the NLL it stops pushing once the target token wins by κ, and it is
    not saturated by the softmax when the model is very sure of the refusal."""
    pos, tok = first_divergent(target["labels"], refusal["labels"])

    def objective(model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**{**model_inputs(target), **overrides}).logits
        rows = torch.arange(len(pos), device=logits.device)
        z = logits[rows, pos.to(logits.device)].float()
        own = z[rows, tok.to(logits.device)]
        other = z.scatter(1, tok.to(logits.device)[:, None], float("-inf")).amax(1)
        return (other - own).clamp_min(-kappa)
    return objective
