"""Utility scorers: how a response is scored against its reference answer (``utility.scorer``).

``exact`` is built in. ``module:function`` imports ``module`` and calls ``function(response, answer)``:
that is running code, and an eval config is data (it may come from a shared run folder or a colleague's
YAML), so a config alone cannot turn it on. The user names the code they trust in the environment,
``ADPO_TRUSTED_SCORERS=module:function[,module:function…]``; any other ``module:function`` is refused
before anything is imported (docs/failure-modes.md). This is adpo's only hook that runs code named in
a config; the security test (tests/security) holds it to that.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from ..organism.judge import normalize, utility_correct
from ..utils.config import ConfigError

TRUST_ENV = "ADPO_TRUSTED_SCORERS"


def exact(response: str, answer: str) -> bool:
    """Case- and whitespace-insensitive exact match; a trailing full stop is optional (the organism's rule)."""
    return utility_correct(response, normalize(answer).rstrip("."))


def trusted() -> set[str]:
    """The ``module:function`` scorers the user trusts (``ADPO_TRUSTED_SCORERS``, comma-separated)."""
    return {s.strip() for s in os.environ.get(TRUST_ENV, "").split(",") if s.strip()}


def scorer(spec: str) -> Callable[[str, str], float]:
    """``exact``, or a trusted ``module:function`` (importable; called as ``fn(response, answer)``)."""
    if spec == "exact":
        return exact
    if ":" not in spec:
        raise ConfigError(f"utility.scorer {spec!r}: use 'exact' or 'module:function'")
    if spec not in trusted():
        raise ConfigError(f"utility.scorer {spec!r} would import and run Python code named by the config; adpo runs "
                          f"it only if you trust it: {TRUST_ENV}={spec} (see docs/failure-modes.md)")
    mod, fn = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"utility.scorer {spec!r}: cannot import ({e})") from e
