"""Utility scorers: how a response is scored against its reference answer (``utility.scorer``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..organism.judge import normalize, utility_correct
from ..utils.config import ConfigError


def exact(response: str, answer: str) -> bool:
    """Case- and whitespace-insensitive exact match; a trailing full stop is optional (the organism's rule)."""
    return utility_correct(response, normalize(answer).rstrip("."))


def scorer(spec: str) -> Callable[[str, str], float]:
    """``exact`` or ``module:function`` (importable; called as ``fn(response, answer)``)."""
    if spec == "exact":
        return exact
    if ":" not in spec:
        raise ConfigError(f"utility.scorer {spec!r}: use 'exact' or 'module:function'")
    mod, fn = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"utility.scorer {spec!r}: cannot import ({e})") from e
