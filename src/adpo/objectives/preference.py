"""Preference losses on summed response log-probs: DPO (sigmoid), IPO and hinge, as TRL names them.

Inputs are per-pair log-probs (fp32) of the policy and the reference for the chosen and the rejected
answer. ADPO changes *where* the policy's log-probs are taken (under a worst-case perturbation), not
this formula, so one function serves DPO, AR-DPO, AT-DPO and ADPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class PreferenceOutput:
    losses: torch.Tensor  # (B,) per pair
    chosen_rewards: torch.Tensor  # (B,) beta * (log pi - log ref), detached
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> PreferenceOutput:
    """Per-pair preference loss.

    * ``sigmoid`` (DPO, Rafailov et al.): ``-log σ(β h)``, with conservative label smoothing as in TRL;
    * ``ipo`` (Azar et al.): ``(h - 1/(2β))²`` — callers pass length-averaged log-probs, as TRL does;
    * ``hinge`` (SLiC): ``relu(1 - β h)``;

    where ``h = (π_c - ref_c) - (π_r - ref_r)``.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {list(LOSS_TYPES)}")
    return PreferenceOutput(losses, (beta * (policy_chosen - ref_chosen)).detach(),
                            (beta * (policy_rejected - ref_rejected)).detach())


def preference_metrics(out: PreferenceOutput, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                       prefix: str = "") -> dict[str, float]:
    """TRL's metric names, so dashboards and habits carry over."""
    c, r = out.chosen_rewards, out.rejected_rewards
    return {f"{prefix}rewards/chosen": float(c.mean()), f"{prefix}rewards/rejected": float(r.mean()),
            f"{prefix}rewards/margins": float((c - r).mean()),
            f"{prefix}rewards/accuracies": float((c > r).float().mean()),
            f"{prefix}logps/chosen": float(policy_chosen.detach().mean()),
            f"{prefix}logps/rejected": float(policy_rejected.detach().mean())}
