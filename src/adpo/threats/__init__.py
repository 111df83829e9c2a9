"""Threat models: one protocol, one loop, shared by training (ADPO's inner maximisation, AT) and evaluation.

See docs/threats.md for the call shape and docs/architecture.md for adding a threat model.
"""

from .budget import eps_label, parse_eps
from .codecs import codec_for
from .image import ImagePGD
from .joint import JointPGD
from .latent import LatentPGD
from .objectives import Objective, dpo_margin, model_inputs, targeted_nll
from .protocol import AttackResult, Threat, attack_mode, optimise, pgd
from .registry import THREATS
from .square import RandomSearch
from .universal import UniversalImagePGD

__all__ = ["THREATS", "AttackResult", "ImagePGD", "JointPGD", "LatentPGD", "Objective", "RandomSearch", "Threat",
           "UniversalImagePGD", "attack_mode", "codec_for", "dpo_margin", "eps_label", "model_inputs", "optimise",
           "parse_eps", "pgd", "targeted_nll"]
