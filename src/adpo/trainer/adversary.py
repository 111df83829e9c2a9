"""The training adversary, and the options that buy its robustness for less compute (all off by default).

ADPO's inner maximisation costs K input-gradient passes per step (``image.steps``; the official recipe
30), so on a 7B model the adversary *is* the training cost. The adversarial-training literature has
ways to pay less; each is one option of ``train`` (docs/training.md, "Cheaper adversaries"):

* ``persistent_perturbations`` — every pair's attack starts from that pair's last perturbation (its
  image and latent iterate, kept per dataset row across steps and epochs) instead of a fresh start, so
  K steps continue an attack that earlier steps began (warm starts; Zheng et al. 2020, "Efficient
  adversarial training with transferable adversarial examples", ATTA). Saved in checkpoints
  (``adversary.pt``), so a resumed run stays bit-identical.
* ``attack_stop_below`` — per-sample early stop: a pair whose attack objective is at or below the
  threshold keeps that iterate and leaves the batch; the remaining steps run on the other pairs only
  (``protocol.optimise``; cf. Zhang et al. 2020, "Attacks which do not kill training make adversarial
  learning stronger", FAT). ``adv/passes`` logs the passes actually spent.
* ``free_replays = m`` — free adversarial training (Shafahi et al. 2019, "Adversarial training for
  free!"): each batch is replayed m times in a row; the policy's loss is taken under the current
  perturbation, and the *same* backward that gives the weight gradients gives the input gradient, from
  which the perturbation takes one ascent step (the threat's step rule and projection) for the next
  replay. No attack passes at all; the perturbation ascends the training loss itself (for the DPO family,
  the DPO loss: the ``dpo_margin`` objective, whatever ``attack_objective`` says).
* ``latent.truncate`` (a setting of the latent threat, :mod:`adpo.threats.latent`) — the layers below
  the latent layer run once without grad and the attack steps re-run only the layers above.

With every option off :meth:`Adversary.attack` is exactly ``threat.run(...)`` (the recipe trains
byte-identically; tested).
"""

from __future__ import annotations

from typing import Any

import torch

from ..threats.protocol import AttackContext, AttackResult, Threat
from .config import TrainConfig


class Adversary:
    """The training adversary's state across steps: the per-row perturbations, the pending free step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.replays = max(1, cfg.free_replays)
        self.store: dict[str, dict[int, torch.Tensor]] = {}  # variable name -> dataset row -> its last iterate
        self.rows: list[int] = []  # the dataset rows of the current micro-batch's pairs
        self.replay = 0
        self.passes = 0.0  # input-gradient passes spent by the attacks so far, in batch units (benchmarks)
        # free training: (parts, states, leaves, context) of the perturbation awaiting the policy's backward
        self._pending: tuple[list[Threat], list[Any], list[torch.Tensor], AttackContext] | None = None

    @property
    def keeps_state(self) -> bool:
        return bool(self.cfg.persistent_perturbations or self.cfg.free_replays)

    def data_index(self, micro: int) -> int:
        """The data stream's micro-batch for training micro-batch ``micro`` (free training replays each)."""
        return micro // self.replays

    def begin(self, micro: int, rows: list[int]) -> None:
        """Micro-batch ``micro`` attacks the pairs of dataset rows ``rows``."""
        self.rows, self.replay = list(rows), micro % self.replays
        if self.cfg.free_replays and not self.cfg.persistent_perturbations and self.replay == 0:
            self.store.clear()  # a new batch starts fresh; only the current batch's replays are kept

    def warm(self) -> dict[str, list[torch.Tensor | None]]:
        """The stored start points of the current rows (None where a row has none yet)."""
        resume = self.cfg.persistent_perturbations or (self.cfg.free_replays and self.replay > 0)
        if not resume:
            return {}
        return {name: [kept.get(r) for r in self.rows] for name, kept in self.store.items()}

    def remember(self, result: AttackResult) -> None:
        """Keep each row's returned iterate: the image, and the latent rows at its prompt positions."""
        if not self.keeps_state:
            return
        if result.x_adv is not None:
            kept = self.store.setdefault("image", {})
            for i, r in enumerate(self.rows):
                kept[r] = result.x_adv[i].detach().clone()
        for li, d in (result.latent or {}).items():
            kept = self.store.setdefault(f"latent@{li}", {})
            for i, r in enumerate(self.rows):
                kept[r] = d[i][result.prompt_mask[i]].detach().clone()

    def attack(self, threat: Threat, model: torch.nn.Module, inputs: dict[str, torch.Tensor], objective,
               codec: Any, generator: torch.Generator) -> AttackResult:
        """The perturbation of the current micro-batch against ``model``: K steps of ``threat`` (warm-started,
        early-stopped as configured), or free training's current iterate, live for the policy's backward."""
        if self.cfg.free_replays:
            return self._free(threat, model, inputs, objective, codec, generator)
        if not self.cfg.cheaper_adversary:
            result = threat.run(model, inputs, objective, codec=codec, generator=generator)
        else:
            result = threat.run(model, inputs, objective, codec=codec, generator=generator, warm=self.warm(),
                                stop_below=self.cfg.attack_stop_below)
            self.remember(result)
        self.passes += result.passes
        return result

    def _free(self, threat: Threat, model, inputs, objective, codec, generator) -> AttackResult:
        parts = list(threat.parts())
        ctx = AttackContext(model, inputs, objective, codec, generator, warm=self.warm())
        with torch.no_grad():
            states = [p.init(ctx) for p in parts]
        leaves = [leaf for p, s in zip(parts, states) for leaf in p.leaves(s)]
        result = AttackResult(loss=torch.zeros(0), settings=threat.settings_dict())
        norms = AttackResult(loss=result.loss, settings={})
        for p, s in zip(parts, states):
            p.attach(ctx, s, result)
            p.finish(ctx, s, norms)
        result.norms = norms.norms
        self._pending = (parts, states, leaves, ctx)
        return result

    def after_backward(self) -> None:
        """Free training: one ascent step of the pending perturbation on the gradient the policy's backward
        left on it (the training loss's input gradient), projected; kept for the batch's next replay."""
        if self._pending is None:
            return
        parts, states, leaves, ctx = self._pending
        self._pending = None
        grads = [torch.zeros_like(v) if v.grad is None else -torch.nan_to_num(v.grad, nan=0.0, posinf=0.0,
                                                                             neginf=0.0)
                 for v in leaves]  # the rules descend; the adversary ascends the training loss
        result = AttackResult(loss=torch.zeros(0), settings={})
        with torch.no_grad():
            for p, s in zip(parts, states):
                n = len(p.variables(s))
                p.step(s, grads[:n], torch.zeros(len(self.rows)))
                grads = grads[n:]
                p.finish(ctx, s, result)
        self.remember(result)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Plain tensors by name and row (``weights_only`` loads them)."""
        return {name: {str(r): t for r, t in kept.items()} for name, kept in self.store.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.store = {name: {int(r): t for r, t in kept.items()} for name, kept in state.items()}
