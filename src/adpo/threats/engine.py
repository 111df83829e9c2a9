"""One attack engine for training (ADPO's inner maximisation, AT) and evaluation (the white-box attacker).

Every threat model has the same call shape (torchattacks' idea, for VLM objectives)::

    result = threat.run(model, inputs, objective, codec=codec, generator=g)

* ``inputs``: the shared perturbable inputs of one batch: ``pixel_values`` (+ family extras such as
  ``image_grid_thw``) for image threats, ``prompt_mask`` (B, T) for latent threats;
* ``objective(model, overrides) -> (B,)``: a per-sample loss to *minimise*, computed by calling the model
  with ``overrides`` (e.g. the perturbed ``pixel_values``) merged into its own text batch(es); see
  :func:`targeted_nll` and :func:`dpo_margin`;
* ``result``: an :class:`AttackResult` with the perturbation, the final per-sample loss, the settings and
  the norms actually used.

Hygiene, guaranteed by :func:`attack_mode`: gradients are taken w.r.t. the perturbations only (all
parameters are frozen during the attack, so no parameter ``.grad`` accumulates and no weight gradients
are computed); ``requires_grad`` flags and train/eval mode are restored on exit and on exceptions; hooks
are removed likewise; the attack works under a caller's ``torch.no_grad()``; non-finite gradients are
zeroed; log-probs are fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.families import unwrap
from ..objectives.logps import model_logps
from .codecs import codec_inputs
from .image import ImagePGD, project, project_delta, start_point, step
from .latent import decoder_layers, project_tokens, residual_perturbation

Objective = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
MODEL_KEYS_EXCLUDED = ("labels", "prompt_mask")


# ---- objectives -------------------------------------------------------------------------------------

def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``model(...)`` in a batch (without ``labels`` and ``prompt_mask``)."""
    return {k: v for k, v in batch.items() if k not in MODEL_KEYS_EXCLUDED}


def _logps(model: nn.Module, batch: dict[str, torch.Tensor], overrides: dict[str, torch.Tensor],
           chunk: int) -> torch.Tensor:
    lp, _ = model_logps(model, {**model_inputs(batch), **overrides}, batch["labels"], chunk)
    return lp.sum(-1)


def targeted_nll(batch: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Minimise -log p(target | perturbed input): ``batch['labels']`` holds the target response.

    ``chunk``: response tokens per log-prob chunk (:func:`adpo.objectives.logps.model_logps`; 0 = full logits).
    """
    def objective(model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        return -_logps(model, batch, overrides, chunk)
    return objective


def dpo_margin(chosen: dict[str, torch.Tensor], rejected: dict[str, torch.Tensor], chunk: int = 0) -> Objective:
    """Maximise log pi(rejected) - log pi(chosen) (the DPO loss's policy term), i.e. minimise its negative.

    Both batches share the perturbation (one image per pair, as in the paper's code).
    """
    def objective(model: nn.Module, overrides: dict[str, torch.Tensor]) -> torch.Tensor:
        return _logps(model, chosen, overrides, chunk) - _logps(model, rejected, overrides, chunk)
    return objective


# ---- hygiene -----------------------------------------------------------------------------------------

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


# ---- threat models ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatentPGD:
    """Residual-stream perturbation after ``layers`` at prompt positions, per-token L2 ball ``eps``.

    ``relative=True`` reads ``eps`` as a fraction of the layer's median clean token norm (measured on the
    batch), which is how a budget transfers between models. ``optimizer``: "sign" (signed-gradient step of
    ``step_size``, then projection) or "adam" (Adam with lr ``step_size``, as in LAT).
    """

    eps: float = 1.0
    step_size: float = 0.1
    steps: int = 10
    layers: tuple[int, ...] = (-2,)
    optimizer: str = "sign"
    random_start: bool = False
    relative: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sign", "adam"):
            raise ValueError(f"optimizer must be 'sign' or 'adam', got {self.optimizer!r}")
        if self.eps <= 0 or self.step_size <= 0 or self.steps < 0 or not self.layers:
            raise ValueError("eps and step_size must be > 0, steps >= 0, and at least one layer")

    def to_dict(self) -> dict:
        return asdict(self)

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, *,
            codec: Any = None, generator: torch.Generator | None = None) -> AttackResult:
        return optimise(model, inputs, objective, latent=self, steps=self.steps, generator=generator)


@dataclass(frozen=True)
class JointPGD:
    """Image and latent perturbations optimised together, ``steps`` iterations (beyond the paper)."""

    image: ImagePGD = field(default_factory=ImagePGD)
    latent: LatentPGD = field(default_factory=LatentPGD)
    steps: int = 10

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "latent": self.latent.to_dict(), "steps": self.steps}

    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, *,
            codec: Any, generator: torch.Generator | None = None) -> AttackResult:
        return optimise(model, inputs, objective, image=self.image, latent=self.latent, codec=codec,
                        steps=self.steps, generator=generator)


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
        ctx = nullcontext()
        if self.latent:
            deltas = {li: d.repeat(repeat, 1, 1) for li, d in self.latent.items()}
            ctx = residual_perturbation(model, deltas, self.prompt_mask.repeat(repeat, 1), norms)
        with ctx:
            yield overrides


class _Identity:
    """The codec of a plain tensor objective: the perturbed tensor is what the loss sees."""

    extra_keys = ()

    @staticmethod
    def encode(x: torch.Tensor) -> torch.Tensor:
        return x

    decode = encode


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, cfg: ImagePGD,
        generator: torch.Generator | None = None) -> AttackResult:
    """Image PGD on a plain objective ``loss_fn(x01) -> (B,)`` to minimise, through the shared loop.

    For callers that already hold the image tensor and a closure over the model (and for testing the
    math on toy objectives); gradients are w.r.t. the image only.
    """
    return optimise(nn.Module(), {"pixel_values": x0}, lambda _model, o: loss_fn(o["pixel_values"]), image=cfg,
                    codec=_Identity(), steps=cfg.steps, generator=generator)


def _prompt_mask(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if "prompt_mask" not in inputs:
        raise KeyError("latent threats need inputs['prompt_mask'] (B, T): the prompt positions to perturb")
    mask = inputs["prompt_mask"].bool()
    if "attention_mask" in inputs and inputs["attention_mask"].shape == mask.shape:
        mask = mask & inputs["attention_mask"].bool()  # never padding (official-code bug B4)
    width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 0
    return mask[:, :width]


def _hidden_size(model: nn.Module) -> int:
    cfg = unwrap(model).config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.hidden_size)


def optimise(model: nn.Module, inputs: dict[str, torch.Tensor], objective: Objective, *, steps: int,
             image: ImagePGD | None = None, latent: LatentPGD | None = None, codec: Any = None,
             generator: torch.Generator | None = None,
             on_step: Callable[[int, AttackResult], bool | None] | None = None, every: int = 0) -> AttackResult:
    """The shared PGD loop over an image perturbation, latent perturbations, or both.

    ``on_step(i, snapshot)`` is called with the iterate after ``i`` steps for every ``i`` divisible by
    ``every`` (when > 0) and for the last one: the evaluation generates from these checkpoints, so a
    longer run with the same seed sees every checkpoint a shorter one saw (its ASR cannot be lower).
    A true return value stops the loop there (every sample already succeeded).
    """
    codec_kw = codec_inputs(codec, inputs) if codec is not None else {}
    with attack_mode(model):
        x0 = x = None
        if image is not None:
            if codec is None:
                raise ValueError("image threats need a pixel codec (adpo.threats.codecs.codec_for(processor))")
            x0 = codec.decode(inputs["pixel_values"].float(), **codec_kw).clamp(0, 1).detach()
            if image.universal:  # the variable is one shared delta; images are clip(x0 + delta)
                x = start_point(torch.full_like(x0[:1], 0.5), image, generator) - 0.5
            else:
                x = start_point(x0, image, generator)
        universal = image is not None and image.universal

        def image_of(v: torch.Tensor) -> torch.Tensor:
            return (x0 + v).clamp(0, 1) if universal else v

        deltas: dict[int, torch.Tensor] = {}
        mask = eps_lat = None
        clean_norms: dict[int, torch.Tensor] = {}
        if latent is not None:
            device = next(model.parameters()).device
            mask = _prompt_mask(inputs).to(device)
            n_layers = len(decoder_layers(model))
            idx = sorted({li % n_layers for li in latent.layers})
            shape = (mask.shape[0], mask.shape[1], _hidden_size(model))
            zeros = {li: torch.zeros(shape, device=device) for li in idx}
            with torch.no_grad(), residual_perturbation(model, zeros, mask, clean_norms):
                objective(model, {} if image is None else {"pixel_values": codec.encode(x0, **codec_kw)})
            eps_lat = {li: latent.eps * (float(clean_norms[li].median()) if latent.relative else 1.0) for li in idx}
            for li in idx:
                d = torch.zeros(shape, device=device)
                if latent.random_start:
                    d = torch.randn(shape, generator=generator).to(device) * eps_lat[li] / shape[-1] ** 0.5
                deltas[li] = project_tokens(d, eps_lat[li])
        adam = None
        if latent is not None and latent.optimizer == "adam":
            leaves = [d.requires_grad_(True) for d in deltas.values()]
            adam = torch.optim.Adam(leaves, lr=latent.step_size)
        keep_best = image is not None and image.keep_best
        best_loss = best_x = best_d = None
        loss = None
        for i in range(steps + 1):
            if x is not None:
                x = x.detach().requires_grad_(True)
            for li in deltas:
                if adam is None:
                    deltas[li] = deltas[li].detach().requires_grad_(True)
            overrides = {} if x is None else {"pixel_values": codec.encode(image_of(x), **codec_kw)}
            ctx = residual_perturbation(model, deltas, mask) if deltas else nullcontext()
            with ctx:
                loss = objective(model, overrides)
            snap = None
            if on_step is not None and (i == steps or (every > 0 and i % every == 0)):
                snap = AttackResult(loss=loss.detach(), settings={}, prompt_mask=mask,
                                    latent={li: d.detach() for li, d in deltas.items()} or None)
                if x is not None:
                    snap.x_adv = image_of(x.detach())
                    snap.pixel_values = overrides["pixel_values"].detach()
            if keep_best:
                with torch.no_grad():
                    cur = loss.detach()
                    if best_loss is None:
                        best_loss, best_x = cur.clone(), x.detach().clone()
                        best_d = {li: d.detach().clone() for li, d in deltas.items()}
                    better = cur < best_loss
                    best_loss = torch.where(better, cur, best_loss)
                    best_x[better] = x.detach()[better]
                    for li, d in deltas.items():
                        best_d[li][better] = d.detach()[better]
            if i == steps:
                loss = loss.detach()  # release the graph before the callback generates
                if snap is not None:
                    on_step(i, snap)
                break
            leaves = ([x] if x is not None else []) + list(deltas.values())
            grads = torch.autograd.grad(loss.sum(), leaves)  # frees the graph before the callback generates
            grads = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
            if snap is not None and on_step(i, snap):
                break
            with torch.no_grad():
                if x is not None:
                    moved = step(x.detach(), grads[0], image.step_size, image.norm)
                    x = (project_delta(moved, image.eps, image.norm) if universal
                         else project(moved, x0, image.eps, image.norm))
                    grads = grads[1:]
                if adam is not None:
                    for d, g in zip(deltas.values(), grads):
                        d.grad = g
                    adam.step()
                    adam.zero_grad(set_to_none=True)
                    for li, d in deltas.items():
                        d.copy_(project_tokens(d, eps_lat[li]))
                else:
                    for (li, d), g in zip(list(deltas.items()), grads):
                        deltas[li] = project_tokens(d.detach() - latent.step_size * g.sign(), eps_lat[li])
        final_loss = loss.detach()
        if keep_best:
            x, final_loss = best_x, best_loss
            deltas = best_d
    settings = {"steps": steps, "image": image.to_dict() if image else None,
                "latent": latent.to_dict() if latent else None}
    result = AttackResult(loss=final_loss, settings=settings, prompt_mask=mask)
    if x is not None:
        if universal:
            result.delta = x.detach()
        x = image_of(x.detach())
        d = (x - x0).flatten(1)
        result.x_adv = x
        result.pixel_values = codec.encode(x, **codec_kw).detach()
        result.norms.update(image_linf=d.abs().amax(1), image_l2=d.norm(dim=1))
    if deltas:
        result.latent = {li: d.detach() for li, d in deltas.items()}
        for li, d in result.latent.items():
            tok = d.norm(dim=-1)[mask]
            h = clean_norms[li]
            result.norms[f"latent_l2_max@{li}"] = float(tok.max()) if tok.numel() else 0.0
            result.norms[f"latent_eps@{li}"] = eps_lat[li]
            result.norms[f"latent_rel@{li}"] = float(tok.median() / h.median()) if tok.numel() else 0.0
    return result


