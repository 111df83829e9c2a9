"""The threat protocol, and the one loop that drives it for training and evaluation alike.

ADPO's inner maximisation (training), the AT reference's attack and the white-box evaluation attacker
all run :func:`optimise`, so a robustness number is never the product of a weaker attacker at test time.
A threat model is a frozen settings dataclass (its fields *are* its documented defaults) that implements
a few small methods; :func:`optimise` drives them and knows none of them::

    state = threat.init(ctx)                 # the start point (clean or random), inside the threat set
    with threat.apply(ctx, state) as overrides:   # model inputs to override and/or hooks to install
        loss = ctx.objective(ctx.model, overrides)
    threat.step(state, grads, loss)          # one step of its rule (adpo.threats.rules), through project()

``variables(state)`` names the per-sample tensors the loop differentiates (and, with ``keep_best``,
tracks per sample); ``snapshot`` / ``finish`` write the iterate into an :class:`AttackResult`. A threat
that combines others (:class:`adpo.threats.joint.JointPGD`) returns them from ``parts()``; the loop then
runs every part on one shared loss. Register a new threat in :mod:`adpo.threats.registry` (one line).

Hygiene, guaranteed by :func:`attack_mode`: gradients are taken w.r.t. the perturbations only (all
parameters are frozen during the attack, so no parameter ``.grad`` accumulates and no weight gradients
are computed); ``requires_grad`` flags and train/eval mode are restored on exit and on exceptions; hooks
are removed likewise; the attack works under a caller's ``torch.no_grad()``; non-finite gradients are
zeroed; log-probs are fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .codecs import codec_inputs
from .hooks import residual_perturbation
from .objectives import Objective, select_rows


@dataclass
class AttackContext:
    """What one attack on one batch works with; ``clean`` collects the clean overrides that earlier parts
    of a combined threat contribute (a latent part measures its clean norms on the clean image)."""

    model: nn.Module
    inputs: dict[str, torch.Tensor]
    objective: Objective
    codec: Any = None
    generator: torch.Generator | None = None
    clean: dict[str, torch.Tensor] = field(default_factory=dict)
    # per variable name (as ``Threat.variables`` names them), one start point per sample or None (the threat's
    # own start): the warm start of persistent perturbations; a latent entry holds the prompt positions' rows
    warm: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)

    @property
    def codec_kw(self) -> dict[str, torch.Tensor]:
        return codec_inputs(self.codec, self.inputs) if self.codec is not None else {}

    def select(self, keep: torch.Tensor) -> AttackContext:
        """The context of the samples ``keep`` (a (B,) bool mask) only: inputs, objective, clean overrides."""
        if not hasattr(self.objective, "select"):
            raise ValueError("per-sample early stop needs an objective that can select samples "
                             "(adpo.threats.objectives.RowObjective)")
        return AttackContext(self.model, select_rows(self.inputs, keep), self.objective.select(keep), self.codec,
                             self.generator, select_rows(self.clean, keep))


@dataclass
class AttackResult:
    """What an attack found and what it cost the model."""

    loss: torch.Tensor  # (B,) objective at the returned perturbation (lower = stronger attack)
    settings: dict
    x_adv: torch.Tensor | None = None  # (B, C, H, W) in [0,1]
    pixel_values: torch.Tensor | None = None  # x_adv encoded for the model
    latent: dict[int, torch.Tensor] | None = None  # layer -> (B, Tp, H)
    prompt_mask: torch.Tensor | None = None  # (B, Tp)
    norms: dict[str, Any] = field(default_factory=dict)
    delta: torch.Tensor | None = None  # (1, C, H, W): the shared perturbation of a universal attack
    passes: float = 0.0  # input-gradient passes spent, in whole-batch units (early stop makes them fractional)

    @contextmanager
    def applied(self, model: nn.Module, norms: dict[int, torch.Tensor] | None = None, repeat: int = 1) -> Iterator[
            dict[str, torch.Tensor]]:
        """Yield the overrides (perturbed ``pixel_values``) with the latent hooks installed, for a
        training or generation forward; hooks are removed on exit.

        ``repeat`` tiles the latent perturbation over a forward whose rows repeat the attacked ones
        ``repeat`` times (the [chosen; rejected] rows of a pair batch share their pair's perturbation);
        image overrides stay per image, since doubling image tensors is family-specific.
        """
        overrides = {} if self.pixel_values is None else {"pixel_values": self.pixel_values}
        ctx: AbstractContextManager = nullcontext()
        if self.latent:
            deltas = {li: d.repeat(repeat, 1, 1) for li, d in self.latent.items()}
            ctx = residual_perturbation(model, deltas, self.prompt_mask.repeat(repeat, 1), norms)
        with ctx:
            yield overrides


class Threat:
    """Base class of the threat models' settings dataclasses (see the module docstring for the protocol).

    Subclasses are ``@dataclass(frozen=True)`` with a ``steps`` field, set ``kind`` (the key under which
    their settings appear in :attr:`AttackResult.settings`) and ``needs_codec``, and implement the methods.
    """

    kind: ClassVar[str] = "threat"
    needs_codec: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = True  # False: a gradient-free search (forwards under no_grad, no backward)
    trainable: ClassVar[bool] = True  # may be ``train.threat`` (adpo.threats.registry)
    section: ClassVar[bool] = True  # owns a section of training configs, named as in the registry
    training_defaults: ClassVar[dict[str, Any]] = {}  # what ``adpo train`` uses for fields a config leaves unset
    steps: int
    keep_best: bool

    # -- the protocol --------------------------------------------------------------------------------
    def init(self, ctx: AttackContext) -> Any:
        raise NotImplementedError

    def variables(self, state: Any) -> dict[str, torch.Tensor]:
        """The per-sample tensors optimised (first axis: the batch), by name."""
        raise NotImplementedError

    def load(self, state: Any, variables: dict[str, torch.Tensor]) -> None:
        """Put ``variables`` (as returned by :meth:`variables`) back into ``state``."""
        raise NotImplementedError

    def leaves(self, state: Any) -> list[torch.Tensor]:
        """The variables as autograd leaves for the next forward: detached copies, or the variables themselves
        when the state's step rule keeps persistent leaves (Adam's moments belong to them)."""
        rule = getattr(state, "rule", None)
        if rule is not None and rule.persistent:
            return list(self.variables(state).values())
        out = []
        for name, v in self.variables(state).items():
            leaf = v.detach().requires_grad_(True)
            out.append(leaf)
            self.load(state, {name: leaf})
        return out

    def apply(self, ctx: AttackContext, state: Any) -> AbstractContextManager[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def step(self, state: Any, grads: list[torch.Tensor], loss: torch.Tensor) -> None:
        """One step of the threat's rule on the per-sample ``loss`` (B,) with ``grads`` (one per leaf); the new
        iterate goes through :meth:`project`."""
        raise NotImplementedError

    def project(self, state: Any, variables: list[torch.Tensor]) -> list[torch.Tensor]:
        """``variables`` (in :meth:`variables`' order) projected onto the threat set of ``state``."""
        raise NotImplementedError

    def snapshot(self, ctx: AttackContext, state: Any, overrides: dict[str, torch.Tensor],
                 result: AttackResult) -> None:
        """Write the current iterate into ``result`` (checkpoints and the final result)."""
        raise NotImplementedError

    def finish(self, ctx: AttackContext, state: Any, result: AttackResult) -> None:
        """Write the returned perturbation and its norms into the final ``result``."""
        raise NotImplementedError

    def select(self, state: Any, keep: torch.Tensor) -> Any:
        """The state of the samples ``keep`` (a (B,) bool mask) only (per-sample early stop)."""
        raise NotImplementedError(f"{type(self).__name__} does not support per-sample early stop")

    def attach(self, ctx: AttackContext, state: Any, result: AttackResult) -> None:
        """Write the current iterate into ``result`` *without* detaching it, so the policy's own backward
        reaches the perturbation (free adversarial training, :mod:`adpo.trainer.adversary`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be trained with free adversarial training")

    # -- shared --------------------------------------------------------------------------------------
    @classmethod
    def from_sections(cls, name: str, sections: dict[str, Threat]) -> Threat:
        """The threat a training config's resolved sections describe (a sectioned threat: its own)."""
        return sections[name]

    def parts(self) -> tuple[Threat, ...]:
        """The threats the loop runs on one shared loss (itself; a combined threat returns its parts)."""
        return (self,)

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    def settings_dict(self) -> dict:
        """What :attr:`AttackResult.settings` records: the steps and each part's settings by kind."""
        out: dict[str, Any] = {"steps": self.steps, "image": None, "latent": None}
        out.update({p.kind: p.to_dict() for p in self.parts()})
        return out

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, *,
            codec: Any = None, generator: torch.Generator | None = None, **options: Any) -> AttackResult:
        """The common call shape: ``threat.run(model, inputs, objective, codec=codec, generator=g)``;
        ``options``: :func:`optimise`'s ``warm`` / ``stop_below``."""
        return optimise(model, inputs, objective, self, codec=codec, generator=generator, **options)


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Freeze every parameter and enable grad for the perturbations; restore flags and mode afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    training = model.training
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(training)


@contextmanager
def applied_parts(ctx: AttackContext, parts: tuple[Threat, ...], states: list[Any]) -> Iterator[
        dict[str, torch.Tensor]]:
    """Every part's overrides merged, with every part's hooks installed (removed on exit)."""
    with ExitStack() as stack:
        overrides: dict[str, torch.Tensor] = {}
        for p, s in zip(parts, states):
            overrides.update(stack.enter_context(p.apply(ctx, s)))
        yield overrides


def optimise(model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, threat: Threat, *,
             codec: Any = None, generator: torch.Generator | None = None,
             on_step: Callable[[int, AttackResult], bool | None] | None = None, every: int = 0,
             warm: dict[str, list[torch.Tensor | None]] | None = None,
             stop_below: float | None = None) -> AttackResult:
    """Minimise ``objective`` over ``threat``'s perturbation set by projected gradient steps.

    Each of ``threat.steps`` iterations: a forward with every part applied, the gradient w.r.t. the
    perturbations only (non-finite entries zeroed), each part's step and projection. With
    ``threat.keep_best`` the returned perturbation is, per sample, the iterate with the lowest loss seen
    (the last one included); otherwise the last iterate.

    ``on_step(i, snapshot)`` is called with the iterate after ``i`` steps for every ``i`` divisible by
    ``every`` (when > 0) and for the last one: the evaluation generates from these checkpoints, so a
    longer run with the same seed sees every checkpoint a shorter one saw (its ASR cannot be lower).
    A true return value stops the loop there (every sample already succeeded).

    ``warm``: per-sample start points (:attr:`AttackContext.warm`). ``stop_below``: per-sample early stop, a
    sample whose loss is at or below it keeps that iterate and leaves the batch (later forwards and backwards
    run on the others only; needs a stateless step rule and an objective that can select samples).
    ``AttackResult.passes`` counts the input-gradient passes spent, in whole-batch units.
    """
    parts = threat.parts()
    if any(p.needs_codec for p in parts) and codec is None:
        raise ValueError("image threats need a pixel codec (adpo.threats.codecs.codec_for(processor))")
    if stop_below is not None and on_step is not None:
        raise ValueError("per-sample early stop is a training option; it does not combine with on_step checkpoints")
    steps = threat.steps
    grad_needed = any(p.needs_grad for p in parts)
    ctx = AttackContext(model, inputs, objective, codec, generator, warm=dict(warm or {}))
    with attack_mode(model):
        full = [p.init(ctx) for p in parts]  # in order: a latent part measures norms on the clean image
        if stop_below is not None and not all(getattr(s, "rule", None) is None or s.rule.stateless for s in full):
            raise ValueError("per-sample early stop needs a stateless step rule (optimizer: sign): the others "
                             "keep per-sample state that cannot follow the samples leaving the batch")
        states, run = list(full), ctx  # the samples still attacked (all of them without early stop)
        rows: torch.Tensor | None = None  # their indices in the batch, tracked with early stop only
        last: torch.Tensor | None = None  # with early stop: each sample's loss at its last evaluated iterate
        current: list[dict[str, torch.Tensor]] = []  # with early stop: each sample's last evaluated iterate
        best_loss: torch.Tensor | None = None
        best: list[dict[str, torch.Tensor]] = []
        loss = None
        passes = 0.0
        for i in range(steps + 1):
            leaves = [leaf for p, s in zip(parts, states) for leaf in p.leaves(s)]
            with applied_parts(run, parts, states) as overrides, nullcontext() if grad_needed else torch.no_grad():
                loss = run.objective(model, overrides)
            snap = None
            if on_step is not None and (i == steps or (every > 0 and i % every == 0)):
                snap = AttackResult(loss=loss.detach(), settings={})
                for p, s in zip(parts, states):
                    p.snapshot(ctx, s, overrides, snap)
            if threat.keep_best:
                with torch.no_grad():
                    cur = loss.detach()
                    if best_loss is None:
                        best_loss = cur.clone()
                        best = [{k: v.detach().clone() for k, v in p.variables(s).items()}
                                for p, s in zip(parts, states)]
                    better = cur < (best_loss if rows is None else best_loss[rows])
                    where = better if rows is None else rows[better]
                    best_loss[where] = cur[better]
                    for p, s, kept in zip(parts, states, best):
                        for k, v in p.variables(s).items():
                            kept[k][where] = v.detach()[better]
            done = None
            if stop_below is not None:
                with torch.no_grad():
                    if rows is None:
                        rows = torch.arange(loss.shape[0], device=loss.device)
                        last = loss.detach().clone()
                        current = [{k: v.detach().clone() for k, v in p.variables(s).items()}
                                   for p, s in zip(parts, states)]
                    last[rows] = loss.detach()
                    for p, s, cur_vars in zip(parts, states, current):
                        for k, v in p.variables(s).items():
                            cur_vars[k][rows] = v.detach()
                    done = loss.detach() <= stop_below
            if i == steps or (done is not None and bool(done.all())):
                loss = loss.detach()  # release the graph before the callback generates
                if snap is not None:
                    on_step(i, snap)
                break
            if grad_needed:
                grads = torch.autograd.grad(loss.sum(), leaves)  # frees the graph before the callback generates
                grads = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
                passes += loss.shape[0] / (last.shape[0] if last is not None else loss.shape[0])
            else:
                grads = [torch.zeros(0)] * len(leaves)
            if snap is not None and on_step(i, snap):
                break
            if done is not None and bool(done.any()):  # the won samples leave the batch with their iterate
                keep = ~done
                rows, loss, run = rows[keep], loss[keep], run.select(keep)
                grads = [g[keep] for g in grads]
                states = [p.select(s, keep) for p, s in zip(parts, states)]
            with torch.no_grad():
                for p, s in zip(parts, states):
                    n = len(p.variables(s))
                    p.step(s, list(grads[:n]), loss.detach())
                    grads = grads[n:]
        final_loss = loss.detach()
        if stop_below is not None:
            final_loss = last
            for p, s, cur_vars in zip(parts, full, current):
                p.load(s, cur_vars)
        if threat.keep_best:
            final_loss = best_loss
            for p, s, kept in zip(parts, full, best):
                p.load(s, kept)
    result = AttackResult(loss=final_loss, settings=threat.settings_dict(), passes=passes)
    for p, s in zip(parts, full):
        p.finish(ctx, s, result)
    return result


class _Identity:
    """The codec of a plain tensor objective: the perturbed tensor is what the loss sees."""

    extra_keys = ()

    @staticmethod
    def encode(x: torch.Tensor) -> torch.Tensor:
        return x

    decode = encode


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, threat: Threat,
        generator: torch.Generator | None = None) -> AttackResult:
    """An image threat on a plain objective ``loss_fn(x01) -> (B,)`` to minimise, through the same loop.

    For callers that already hold the image tensor and a closure over the model (and for testing the
    math on toy objectives); gradients are w.r.t. the image only.
    """
    return optimise(nn.Module(), {"pixel_values": x0}, lambda _model, o: loss_fn(o["pixel_values"]), threat,
                    codec=_Identity(), generator=generator)
