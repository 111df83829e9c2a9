"""The threat models by name: the one list that training (``train.threat``), evaluation and the CLI read.

Adding a threat model is one file (a frozen settings dataclass implementing
:class:`~adpo.threats.protocol.Threat`; worked example in docs/architecture.md) plus one line below.
A threat with ``trainable = True`` gets its own section in ``adpo train`` configs (named as here, its
``training_defaults`` filling unset fields) and may be chosen as ``train.threat``.
"""

from __future__ import annotations

from typing import Any

from ..utils.config import ConfigError, build
from .image import ImagePGD
from .joint import JointPGD
from .latent import LatentPGD
from .protocol import Threat
from .square import RandomSearch
from .universal import UniversalImagePGD

THREATS: dict[str, type[Threat]] = {
    "image": ImagePGD,
    "latent": LatentPGD,
    "joint": JointPGD,
    "universal-image": UniversalImagePGD,
    "random-search": RandomSearch,
}


def trainable() -> list[str]:
    """The names ``train.threat`` accepts."""
    return [name for name, cls in THREATS.items() if cls.trainable]


def sectioned() -> list[str]:
    """The threats that own a section in training configs (a combined threat reads its parts' sections)."""
    return [name for name, cls in THREATS.items() if cls.trainable and cls.section]


def training_sections(raw: dict[str, Any]) -> dict[str, Threat]:
    """Each sectioned threat's settings: its ``training_defaults`` under the config's section ``raw[name]``."""
    return {name: build(THREATS[name], {**THREATS[name].training_defaults, **(raw.get(name) or {})}, name)
            for name in sectioned()}


def training_threat(name: str, sections: dict[str, Threat]) -> Threat:
    """The threat ``train.threat = name`` runs, built from the resolved sections."""
    if name not in trainable():
        raise ConfigError(f"unknown threat {name!r}; trainable threats: {trainable()}")
    return THREATS[name].from_sections(name, sections)
