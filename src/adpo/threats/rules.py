"""Step rules: how a threat model moves its perturbation from one iterate to the next.

Every threat model of :mod:`adpo.threats` (image, latent, their combinations) takes its step rule by
name (the ``optimizer`` field), so a stronger attacker is a setting, not a new loop:

* ``sign``: projected steepest descent with a fixed step (PGD; Madry et al. 2018): ``v ← P(v − η·d(g))``,
  ``d`` the threat's steepest-descent direction (the gradient's sign in L∞, its direction in L2);
* ``adam``: Adam (Kingma & Ba 2015) on the perturbation with learning rate η, then the projection (LAT's
  latent adversary; on pixels an adaptive per-coordinate step);
* ``sign-adam``: the direction of Adam's bias-corrected first moment, ``v ← P(v − η·d(m̂))``: a signed
  step that keeps momentum through noisy gradients;
* ``apgd``: Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness"), per sample:
  momentum 0.75, a step size that starts at 2ε and halves at checkpoints when the loss stalled, and a
  restart from the best point seen when it halves (checkpoints laid out for 100 steps and continued, so
  that a longer run extends a shorter one). It needs no step-size tuning, which is why AutoAttack
  uses it to avoid the over-estimated robustness of fixed-step PGD.

A rule sees the per-sample loss of the current iterate (``loss`` (B,)), its gradient, the threat's
direction ``d`` and projection ``P``; it never sees the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Direction = Callable[[torch.Tensor], torch.Tensor]
Project = Callable[[list[torch.Tensor]], list[torch.Tensor]]
RULES = ("sign", "adam", "sign-adam", "apgd")


def _per_sample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast against ``like`` (B, ...)."""
    return x.view(-1, *[1] * (like.dim() - 1)).to(like)


class Rule:
    """A step rule's interface; one instance per attack run (it holds the run's optimiser state)."""

    persistent = False  # the variables are kept as the same autograd leaves across steps (Adam)
    stateless = False  # holds no per-sample state, so an attack may drop samples mid-run (early stop)

    def update(self, vs: list[torch.Tensor], grads: list[torch.Tensor], loss: torch.Tensor, direction: Direction,
               project: Project) -> list[torch.Tensor]:
        """The next iterate from the current one ``vs``, their ``grads`` and per-sample ``loss`` (B,)."""
        raise NotImplementedError


class Sign(Rule):
    """``v ← P(v − η·d(g))``."""

    stateless = True

    def __init__(self, step_sizes: Sequence[float]):
        self.step_sizes = list(step_sizes)

    def update(self, vs, grads, loss, direction, project):
        return project([v.detach() - eta * direction(g) for v, g, eta in zip(vs, grads, self.step_sizes)])


class Adam(Rule):
    """torch's Adam on the variables (lr η), then the projection in place."""

    persistent = True

    def __init__(self, leaves: list[torch.Tensor], lr: float):
        self.adam = torch.optim.Adam(leaves, lr=lr)

    def update(self, vs, grads, loss, direction, project):
        for v, g in zip(vs, grads):
            v.grad = g
        self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        for v, p in zip(vs, project([v.detach() for v in vs])):
            v.copy_(p)
        return vs


class SignAdam(Rule):
    """``v ← P(v − η·d(m̂))``: Adam's bias-corrected first moment (β1 0.9, β2 0.999) as the direction."""

    def __init__(self, step_sizes: Sequence[float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.step_sizes, self.betas, self.eps = list(step_sizes), betas, eps
        self.m: list[torch.Tensor] = []
        self.s: list[torch.Tensor] = []
        self.t = 0

    def update(self, vs, grads, loss, direction, project):
        b1, b2 = self.betas
        self.t += 1
        if not self.m:
            self.m = [torch.zeros_like(g) for g in grads]
            self.s = [torch.zeros_like(g) for g in grads]
        out = []
        for i, (v, g, eta) in enumerate(zip(vs, grads, self.step_sizes)):
            self.m[i].mul_(b1).add_(g, alpha=1 - b1)
            self.s[i].mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = self.m[i] / (1 - b1 ** self.t)
            s_hat = self.s[i] / (1 - b2 ** self.t)
            out.append(v.detach() - eta * direction(m_hat / (s_hat.sqrt() + self.eps)))
        return project(out)


APGD_HORIZON = 100  # the run length Auto-PGD's schedule is laid out for (its paper's default)


def apgd_checkpoints(steps: int) -> list[int]:
    """Auto-PGD's checkpoints ``w_j = ceil(p_j·H)`` up to ``steps``: p0 = 0, p1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), continued past p = 1 every 0.06.

    Croce & Hein scale the schedule to the run's length N; here it is laid out for a fixed H = 100 and
    continued, so a run of N steps passes through every iterate of a run of N/2 steps with the same seed:
    the ASR at half the budget is then read off the longer run exactly (docs/evaluation.md, convergence).
    """
    p = [0.0, 0.22]
    while math.ceil(p[-1] * APGD_HORIZON) < steps:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * APGD_HORIZON) for q in p if math.ceil(q * APGD_HORIZON) <= steps} - {0})


class APGD(Rule):
    """Auto-PGD, per sample: momentum α = 0.75 after the first step; the step starts at ``2·scale`` (scale: the
    variable's radius) and halves at a checkpoint where fewer than ρ = 75% of the steps since the last one
    lowered the loss, or where neither the step size nor the best loss changed since; a halving restarts the
    sample from its best point."""

    alpha, rho = 0.75, 0.75

    def __init__(self, scales: Sequence[float], steps: int):
        self.scales = list(scales)
        self.checkpoints = set(apgd_checkpoints(steps))
        self.k = 0
        self.last_ck = 0

    def update(self, vs, grads, loss, direction, project):
        loss = loss.detach().float()
        vs = [v.detach() for v in vs]
        if self.k == 0:
            self.eta = torch.full_like(loss, 2.0)
            self.best = [v.clone() for v in vs]
            self.best_loss = loss.clone()
            self.prev = [v.clone() for v in vs]
            self.count = torch.zeros_like(loss)
            self.ck_eta, self.ck_best = self.eta.clone(), loss.clone()
        else:
            self.count += (loss < self.last_loss).float()
            better = loss < self.best_loss
            for b, v in zip(self.best, vs):
                b[better] = v[better]
            self.best_loss = torch.where(better, loss, self.best_loss)
        self.last_loss = loss
        restart = torch.zeros_like(loss, dtype=torch.bool)
        if self.k in self.checkpoints:
            stalled = self.count < self.rho * (self.k - self.last_ck)
            unchanged = (self.eta == self.ck_eta) & (self.best_loss >= self.ck_best)
            restart = stalled | unchanged
            self.eta = torch.where(restart, self.eta / 2, self.eta)
            self.count.zero_()
            self.last_ck, self.ck_eta, self.ck_best = self.k, self.eta.clone(), self.best_loss.clone()
        z = project([v - _per_sample(self.eta * s, v) * direction(g) for v, g, s in zip(vs, grads, self.scales)])
        if self.k > 0:
            a = self.alpha
            z = project([v + a * (zi - v) + (1 - a) * (v - p) for v, zi, p in zip(vs, z, self.prev)])
        out = [torch.where(_per_sample(restart, v).bool(), b, zi) for v, zi, b in zip(vs, z, self.best)]
        self.prev = [torch.where(_per_sample(restart, v).bool(), b, v) for v, b in zip(vs, self.best)]
        if restart.any():
            self.last_loss = torch.where(restart, self.best_loss, self.last_loss)
        self.k += 1
        return out


def make_rule(name: str, *, leaves: list[torch.Tensor], step_size: float | Sequence[float], scales: Sequence[float],
              steps: int) -> Rule:
    """The rule ``name`` for one attack run on ``leaves`` (its variables): ``step_size`` is η of the fixed-step
    rules (one, or one per variable), ``scales`` the variables' radii (Auto-PGD's step starts at 2·radius)."""
    sizes = list(step_size) if isinstance(step_size, (list, tuple)) else [float(step_size)] * len(leaves)
    if name == "sign":
        return Sign(sizes)
    if name == "adam":
        return Adam([v.requires_grad_(True) for v in leaves], lr=sizes[0])
    if name == "sign-adam":
        return SignAdam(sizes)
    if name == "apgd":
        return APGD(scales, steps)
    raise ValueError(f"optimizer must be one of {list(RULES)}, got {name!r}")
