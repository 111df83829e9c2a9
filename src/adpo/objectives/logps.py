"""Response-token log-probabilities in fp32, and the SFT loss built on them.

Log-probs are always taken in fp32 (bf16/fp16 log-softmax is a known source of NaNs and of
DPO-loss mismatches, see ../shared/docs/eval.md §5.7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) for next-token prediction and the mask of scored positions.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned as the model returns them; the shift happens here.
    Returns ``(logps, mask)``, both (B, T-1), with logps 0 where mask is False.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    lp = torch.gather(F.log_softmax(logits, dim=-1), 2, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return lp * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of response-token log-probs per row (what DPO compares), shape (B,)."""
    lp, _ = token_logps(logits, labels)
    return lp.sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sequence") -> torch.Tensor:
    """Cross-entropy on response tokens.

    ``reduction="sequence"`` averages tokens within a row and then rows, so a one-word answer weighs as
    much as a twenty-token one; ``"token"`` averages over all response tokens of the batch (HF's default).
    """
    lp, mask = token_logps(logits, labels)
    if reduction == "token":
        return -lp.sum() / mask.sum().clamp_min(1)
    if reduction == "sequence":
        return (-(lp.sum(-1)) / mask.sum(-1).clamp_min(1)).mean()
    raise ValueError(f"unknown reduction {reduction!r}")
