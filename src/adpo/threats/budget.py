"""One vocabulary for perturbation budgets, in training, evaluation and configs alike.

``"16/255"`` (a fraction on the 8-bit pixel grid), ``0.0627`` (a float in [0,1] pixel units) and
``"inf"`` (the unconstrained attack, which only clips to [0, 1]) all name a budget; :func:`parse_eps`
turns each into a float and :func:`eps_label` turns a float back into the shortest of those spellings.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ..utils.config import ConfigError


def parse_eps(value: Any) -> float:
    """``"16/255"`` -> 0.0627…, ``"inf"`` -> inf; numbers pass through; anything else is a ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"cannot read budget {value!r}: use 16/255, 0.0627 or inf")
    if isinstance(value, (int, float)):
        eps = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("inf", "unconstrained"):
        eps = float("inf")
    else:
        try:
            eps = float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError) as e:
            raise ConfigError(f"cannot read budget {value!r}: use 16/255, 0.0627 or inf") from e
    if not eps > 0:
        raise ConfigError(f"budget {value!r} must be > 0")
    return eps


def eps_label(eps: float) -> str:
    """``16/255`` for pixel budgets on the 1/255 grid, ``inf`` for unconstrained, else ``%g``."""
    if eps >= 1:
        return "inf"
    n = eps * 255
    return f"{round(n)}/255" if abs(n - round(n)) < 1e-6 else f"{eps:g}"
