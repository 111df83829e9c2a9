"""The adversarial-reference (AT) objective: refusal under attack plus weighted clean utility.

``L_AT = L_adv + α · L_util`` with ``L_adv`` the cross-entropy of the safe (chosen) answer on the
worst-case input found toward the harmful (rejected) answer, and ``L_util`` clean SFT on benign data.
α defaults to the official scripts' 30. The official code also floors ``L_adv`` at 0.5 (below it the
gradient is scaled by 1e-4; docs/method.md §8, B3): ``train.at_floor`` (on under ``train.fidelity:
official``).
"""

from __future__ import annotations

import torch


def at_loss(adversarial_ce: torch.Tensor | None, utility_ce: torch.Tensor | None, alpha: float = 30.0,
            floor: float | None = None) -> torch.Tensor:
    """Scalar AT loss. ``floor`` reproduces the official code's ``0.5 + 1e-4·ℓ`` below 0.5 when set. A term
    whose batch part is empty (None: a mixed batch without harmful or without utility rows) counts 0."""
    if adversarial_ce is None and utility_ce is None:
        raise ValueError("at_loss needs a refusal or a utility term")
    adv = adversarial_ce
    if adv is not None and floor is not None and float(adv.detach()) < floor:
        adv = floor + 1e-4 * adv
    if utility_ce is None:
        return adv
    return alpha * utility_ce if adv is None else adv + alpha * utility_ce
