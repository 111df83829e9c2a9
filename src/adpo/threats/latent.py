"""Latent-space threat model: additive perturbations on the residual stream after chosen decoder layers.

The perturbation lives at the prompt positions only (image tokens and user text, never padding or the
response: docs/method.md, bug B4), inside a per-token L2 ball, as in latent adversarial training (LAT;
Casper et al. 2024, Sheshadri et al. 2024). ``relative=True`` reads ``eps`` as a fraction of the layer's
median clean token norm, measured on the batch, which is how a budget transfers between models.

Shapes: ``inputs['prompt_mask']`` (B, T) bool; the perturbation of layer ``l`` is (B, Tp, H), Tp the
last prompt position + 1, H the decoder's hidden size (read from the model).

Example::

    threat = LatentPGD(eps=0.5, relative=True, steps=10, layers=(-2,))
    result = threat.run(model, {**batch, "prompt_mask": mask}, targeted_nll(batch))
    with result.applied(model) as overrides:      # hooks installed, removed on exit
        out = model(**text_batch, **overrides)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..models.families import unwrap
from ..utils.config import option
from .hooks import decoder_layers, residual_perturbation, truncated_below
from .protocol import AttackContext, AttackResult, Threat
from .rules import RULES, Rule, make_rule


def project_tokens(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each token's vector (last axis) into the L2 ball of radius ``eps``."""
    norm = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return delta * (eps / norm).clamp(max=1.0)


def prompt_positions(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (B, Tp) mask of prompt positions to perturb: ``prompt_mask`` without padding, cut to its width."""
    if "prompt_mask" not in inputs:
        raise KeyError("latent threats need inputs['prompt_mask'] (B, T): the prompt positions to perturb")
    mask = inputs["prompt_mask"].bool()
    if "attention_mask" in inputs and inputs["attention_mask"].shape == mask.shape:
        mask = mask & inputs["attention_mask"].bool()  # never padding (docs/method.md, bug B4)
    width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 0
    return mask[:, :width]


def hidden_size(model: torch.nn.Module) -> int:
    cfg = unwrap(model).config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.hidden_size)


@dataclass
class LatentState:
    deltas: dict[int, torch.Tensor]  # layer -> (B, Tp, H)
    mask: torch.Tensor  # (B, Tp)
    eps: dict[int, float]  # layer -> absolute radius
    clean_norms: dict[int, torch.Tensor]  # layer -> clean token norms at the masked positions
    rule: Rule | None = None
    below: list[Any] | None = None  # with ``truncate``: the lowest hooked layer's clean outputs, one per forward


@dataclass(frozen=True)
class LatentPGD(Threat):
    """Residual-stream perturbation after ``layers`` at prompt positions, per-token L2 ball ``eps``.

    ``optimizer``: the step rule (:mod:`adpo.threats.rules`): "sign" (signed-gradient step of
    ``step_size``, then projection), "adam" (Adam with lr ``step_size``, as in LAT), "sign-adam" or
    "apgd" (per-token directions; Auto-PGD's step starts at 2·eps). ``keep_best``: return, per sample, the
    lowest-loss iterate.
    """

    kind: ClassVar[str] = "latent"

    eps: float = option(1.0, "per-token L2 budget (× the median clean token norm when latent.relative)")
    step_size: float = option(0.1, "step (Adam's lr for adam)")
    steps: int = option(10, "attack steps")
    layers: tuple[int, ...] = option((-2,), "decoder layers whose output is perturbed (negative: from the end)")
    optimizer: str = option("sign", "step rule: sign | adam (LAT) | sign-adam | apgd")
    random_start: bool = option(False, "start from a random point of the ball")
    relative: bool = option(False, "eps is a fraction of the layer's median clean token norm")
    keep_best: bool = option(False, "return, per sample, the lowest-loss iterate")
    truncate: bool = option(False, "run the decoder layers below the lowest perturbed layer once (no grad) and "
                                   "only the layers above it at each step; exact, for a latent threat alone")

    # The training adversary of the official code (LAT; docs/method.md §2.2): what ``adpo train`` uses for
    # every field a config leaves unset. Adam steps of 0.05, 10 steps, eps 0.1, the second-to-last layer.
    training_defaults: ClassVar[dict[str, Any]] = {"eps": 0.1, "step_size": 0.05, "steps": 10, "optimizer": "adam",
                                                    "layers": (-2,)}

    def __post_init__(self) -> None:
        if self.optimizer not in RULES:
            raise ValueError(f"optimizer must be one of {list(RULES)}, got {self.optimizer!r}")
        if self.eps <= 0 or self.step_size <= 0 or self.steps < 0 or not self.layers:
            raise ValueError("eps and step_size must be > 0, steps >= 0, and at least one layer")
        object.__setattr__(self, "layers", tuple(int(li) for li in self.layers))

    def init(self, ctx: AttackContext) -> LatentState:
        model = ctx.model
        device = next(model.parameters()).device
        mask = prompt_positions(ctx.inputs).to(device)
        n_layers = len(decoder_layers(model))
        idx = sorted({li % n_layers for li in self.layers})
        shape = (mask.shape[0], mask.shape[1], hidden_size(model))
        zeros = {li: torch.zeros(shape, device=device) for li in idx}
        clean_norms: dict[int, torch.Tensor] = {}
        below: list[Any] | None = [] if self.truncate else None
        handle = decoder_layers(model)[idx[0]].register_forward_hook(
            lambda _m, _a, out: below.append(_detached(out))) if below is not None else None
        try:
            with torch.no_grad(), residual_perturbation(model, zeros, mask, clean_norms):
                ctx.objective(model, dict(ctx.clean))
        finally:
            if handle is not None:
                handle.remove()
        eps = {li: self.eps * (float(clean_norms[li].median()) if self.relative else 1.0) for li in idx}
        deltas = {}
        for li in idx:
            d = torch.zeros(shape, device=device)
            if self.random_start:
                d = torch.randn(shape, generator=ctx.generator).to(device) * eps[li] / shape[-1] ** 0.5
            for i, w in enumerate(ctx.warm.get(f"latent@{li}", ())):  # persistent perturbations
                if w is not None and w.shape[0] == int(mask[i].sum()):
                    d[i][mask[i]] = w.to(d)
            deltas[li] = project_tokens(d, eps[li])
        rule = make_rule(self.optimizer, leaves=list(deltas.values()), step_size=self.step_size,
                         scales=[eps[li] for li in deltas], steps=self.steps)
        return LatentState(deltas, mask, eps, clean_norms, rule, below)

    def variables(self, state: LatentState) -> dict[str, torch.Tensor]:
        return {f"latent@{li}": d for li, d in state.deltas.items()}

    def load(self, state: LatentState, variables: dict[str, torch.Tensor]) -> None:
        for name, v in variables.items():
            state.deltas[int(name.split("@")[1])] = v

    def apply(self, ctx: AttackContext, state: LatentState) -> AbstractContextManager[dict[str, torch.Tensor]]:
        return _hooked(ctx, state)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """LAT's elementwise sign for the ``sign`` rule; each token's own direction for the adaptive rules
        (the ball is per-token L2)."""
        if self.optimizer == "sign":
            return grad.sign()
        return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def step(self, state: LatentState, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
        new = state.rule.update(list(state.deltas.values()), grads, loss, self.direction,
                                lambda vs: self.project(state, vs))
        state.deltas = dict(zip(state.deltas, new))

    def project(self, state: LatentState, variables: list[torch.Tensor]) -> list[torch.Tensor]:
        return [project_tokens(d, state.eps[li]) for li, d in zip(state.deltas, variables)]

    def select(self, state: LatentState, keep: torch.Tensor) -> LatentState:
        below = None if state.below is None else [_rows(out, keep) for out in state.below]
        return LatentState({li: d[keep] for li, d in state.deltas.items()}, state.mask[keep], state.eps,
                           state.clean_norms, state.rule, below)

    def attach(self, ctx: AttackContext, state: LatentState, result: AttackResult) -> None:
        result.prompt_mask = state.mask
        result.latent = dict(state.deltas)

    def snapshot(self, ctx: AttackContext, state: LatentState, overrides: dict[str, torch.Tensor],
                 result: AttackResult) -> None:
        result.prompt_mask = state.mask
        result.latent = {li: d.detach() for li, d in state.deltas.items()} or None

    def finish(self, ctx: AttackContext, state: LatentState, result: AttackResult) -> None:
        result.prompt_mask = state.mask
        if not state.deltas:
            return
        result.latent = {li: d.detach() for li, d in state.deltas.items()}
        for li, d in result.latent.items():
            tok = d.norm(dim=-1)[state.mask]
            h = state.clean_norms[li]
            result.norms[f"latent_l2_max@{li}"] = float(tok.max()) if tok.numel() else 0.0
            result.norms[f"latent_eps@{li}"] = state.eps[li]
            result.norms[f"latent_rel@{li}"] = float(tok.median() / h.median()) if tok.numel() else 0.0


@contextmanager
def _hooked(ctx: AttackContext, state: LatentState) -> Iterator[dict[str, torch.Tensor]]:
    """The latent part's ``apply``: hooks installed for one forward, no input overrides."""
    if not state.deltas:
        yield {}
        return
    with truncated_below(ctx.model, min(state.deltas), state.below), \
            residual_perturbation(ctx.model, state.deltas, state.mask):
        yield {}


def _detached(out: Any) -> Any:
    return tuple(o.detach() if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out.detach()


def _rows(out: Any, keep: torch.Tensor) -> Any:
    return tuple(o[keep] if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out[keep]
