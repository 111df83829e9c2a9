"""Attack suites: several white-box attacks per subtask, the worst case per behaviour (AutoAttack's habit).

A defence is judged by its strongest attack. Fixed-step sign PGD on one loss is the attack that Croce &
Hein (2020) showed to over-estimate robustness, so ``strong`` adds attacks that differ where a defence
can fool one attack without being robust: the step rule (Auto-PGD's momentum and step-size schedule,
signed Adam), the loss (the target's NLL, its first tokens only, the margin against the refusal, a
Carlini–Wagner margin on the deciding token) and the budget (twice the steps, restarts), then a
gradient-free random search (:class:`~adpo.threats.square.RandomSearch`, image subtasks in L-inf) as the
gradient-masking check: whatever it finds that the white-box attacks missed is reported. They run in
order, each only on the behaviours still standing (:func:`adpo.eval.attacks.ensemble`), so an arm that
falls to the first attack costs no more than ``standard``.

Budgets are written relative to the subtask's own ``steps`` (``steps`` ×) so the suite follows every
task's settings; ``restarts`` None keeps the evaluation's ``restarts``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..threats.image import ImagePGD
from ..threats.protocol import Threat
from ..threats.square import RandomSearch
from .attacks import SuiteAttack


@dataclass(frozen=True)
class Variant:
    name: str
    optimizer: str  # a step rule of adpo.threats.rules ("" for the gradient-free search)
    loss: str  # a key of adpo.eval.attacks.LOSSES
    steps: float = 1.0  # x the subtask's steps
    restarts: int | None = None
    gradient_free: bool = False  # RandomSearch in the subtask's L-inf ball (image subtasks only)


SUITES: dict[str, tuple[Variant, ...]] = {
    "standard": (Variant("pgd", "sign", "nll"),),
    "strong": (
        Variant("pgd", "sign", "nll"),
        Variant("apgd-nll", "apgd", "nll", steps=2.0, restarts=2),
        Variant("apgd-margin", "apgd", "margin", steps=2.0),
        Variant("adam-cw", "sign-adam", "cw", steps=2.0),
        Variant("apgd-prefix", "apgd", "prefix", steps=2.0),
        Variant("random-search", "", "nll", steps=4.0, gradient_free=True),
    ),
}


def _applies(v: Variant, base: Threat) -> bool:
    return not v.gradient_free or (type(base) is ImagePGD and base.norm == "linf")


def suite_attacks(suite: str, base: Threat) -> list[SuiteAttack]:
    """The suite's attacks on one subtask whose configured attack is ``base`` (its threat set and steps)."""
    out = []
    for v in SUITES[suite]:
        if not _applies(v, base):
            continue
        steps = max(1, round(base.steps * v.steps))
        threat = (RandomSearch(eps=base.eps, steps=steps, random_start=base.random_start) if v.gradient_free
                  else replace(base, optimizer=v.optimizer, steps=steps))
        out.append(SuiteAttack(v.name, threat, v.loss, v.restarts))
    return out


def attack_names(suite: str, base: Threat) -> list[str]:
    return [v.name for v in SUITES[suite] if _applies(v, base)]
