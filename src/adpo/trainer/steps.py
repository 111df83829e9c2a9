"""One micro-batch of each objective: attack (if adversarial), forwards, loss and metrics.

The two objectives of the paper (Weng et al. 2025, §3; in our words in docs/method.md §1), each symbol
next to the line of :func:`dpo_step` / :func:`sft_or_at_step` that computes it.

**ADPO** (and, by switching parts off, DPO / AR-DPO / AT-DPO)::

    min_θ  E_(x, y_w, y_l) [ −log σ( β · [ (log π_θ(y_w | x+δ*) − log π_ref(y_w | x))
                                         − (log π_θ(y_l | x+δ*) − log π_ref(y_l | x)) ] ) ]
    δ*  =  argmax_{δ ∈ S}  log π_θ(y_l | x+δ)

    ==========================  ===============================================================
    δ* (the inner maximisation)  ``adv = attack(ctx, batch)``: the threat of ``train.threat`` run
                                 against the *current* policy on ``targeted_nll(rejected)``
                                 (``train.attack_objective``: or the DPO margin)
    S (the threat set)           ``ctx.run.threat()``: image / latent / joint, budgets in its sections
    log π_θ(· | x+δ*)            ``pol_c, pol_r = pair_logps(ctx.model, batch, adv, …)``
    log π_ref(· | x)             ``ref_c, ref_r = pair_logps(ref, batch, None, …)``: the reference
                                 (the AT model for ADPO / AR-DPO, the initial model otherwise) on the
                                 *clean* input, without gradient
    β, −log σ(·), E              ``dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, …).losses.mean()``
    ==========================  ===============================================================

Log-probs are summed over response tokens (fp32). DPO and AR-DPO are the same step with ``adv = None``
(``Method.adversarial`` false); AR-DPO and ADPO differ from DPO and AT-DPO by the reference
(``Method.reference == "at"``).

**AT** (the adversarial reference)::

    min_θ  E [ CE_θ(y_w | x+δ*) ]  +  α · E_util [ CE_θ(y | x) ],     δ* = argmax_{δ ∈ S} log π_θ(y_l | x+δ)

    ==================  ================================================================================
    δ*                   ``adv = attack(ctx, batch)`` (as above)
    CE_θ(y_w | x+δ*)     ``refusal = sft_forward(ctx.model, chosen, adv, ctx)``: the safe answer under attack
    CE_θ(y | x)          ``util = sft_forward(ctx.model, utility, None, ctx)``: clean utility SFT
    α                    ``run.utility_weight`` (the official 30); ``at_loss`` adds the optional 0.5 floor
    ==================  ================================================================================

The attack runs on the *unwrapped* model (no DDP gradient sync, parameters frozen by the threat loop);
its perturbation is then installed only around the policy's forward, so reference passes are always
clean unless ``reference_input="perturbed"`` asks otherwise (docs/method.md §8, bug B6 was a stale hook).
The attack and the reference pass run with dropout off (:func:`dropout_off`; the official trainer disables
dropout), so with ``lora.dropout > 0`` the reference log-probs are a function of the input and the attack
optimises one model; the policy's own pass keeps the configured dropout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.collate import double_images, halves, image_keys
from ..objectives.adversarial import at_loss
from ..objectives.logps import model_logps, response_nll
from ..objectives.preference import dpo_loss, preference_metrics
from ..threats.objectives import dpo_margin, model_inputs, targeted_nll
from ..threats.protocol import AttackResult
from .config import RunConfig


@dataclass
class StepContext:
    run: RunConfig
    model: nn.Module  # as prepared by accelerate (DDP-wrapped when distributed): gets the backward
    core: nn.Module  # unwrapped: attacks and no-grad passes
    policy: Any  # models.adapters.Policy (reference access)
    codec: Any
    generator: torch.Generator
    autocast: Any = nullcontext
    chunk: int = 0  # response tokens per log-prob chunk (objectives.logps.model_logps; 0: full logits)
    adversary: Any = None  # trainer.adversary.Adversary: the training adversary's state; None: plain attacks


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its dropout layers (LoRA's included) in eval mode, each one's flag restored on exit.

    Only the dropout layers: ``model.eval()`` would also switch off transformers' gradient checkpointing
    (it checks ``self.training``), and the attack's backward passes would then hold every activation."""
    flags = [(m, m.training) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m, _ in flags:
        m.training = False
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def attack(ctx: StepContext, batch: dict[str, torch.Tensor]) -> AttackResult:
    """A fresh worst-case perturbation of the pairs' images/prompts against the current policy (dropout off)."""
    chosen, rejected = halves(batch)
    objective = (targeted_nll(rejected, ctx.chunk) if ctx.run.train.attack_objective == "rejected_nll"
                 else dpo_margin(chosen, rejected, ctx.chunk))
    inputs = {**image_keys(batch), "prompt_mask": chosen["prompt_mask"], "attention_mask": chosen["attention_mask"]}
    with ctx.autocast(), dropout_off(ctx.core):
        if ctx.adversary is not None:
            return ctx.adversary.attack(ctx.run.threat(), ctx.core, inputs, objective, ctx.codec, ctx.generator)
        return ctx.run.threat().run(ctx.core, inputs, objective, codec=ctx.codec, generator=ctx.generator)


def _logps(model: nn.Module, batch: dict[str, torch.Tensor], adv: AttackResult | None, ctx: StepContext,
           pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Response (logps, mask) of ``batch`` perturbed by ``adv``; ``pairs``: a [chosen; rejected] batch on B
    shared images."""
    applied = adv.applied(model, repeat=2 if pairs else 1) if adv is not None else nullcontext({})
    with applied as overrides, ctx.autocast():
        images = image_keys(batch)
        images.update({k: v.to(images[k].dtype) for k, v in overrides.items()})
        inputs = {**model_inputs(batch), **(double_images(images) if pairs else images)}
        return model_logps(model, inputs, batch["labels"], ctx.chunk)


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor], adv: AttackResult | None, average: bool,
               ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen logps, rejected logps, token logps, mask) of one [chosen; rejected] forward, perturbed by ``adv``."""
    lp, mask = _logps(model, batch, adv, ctx, pairs=True)
    seq = lp.sum(-1) / (mask.sum(-1).clamp_min(1) if average else 1)
    n = seq.shape[0] // 2
    return seq[:n], seq[n:], lp, mask


def sft_forward(model: nn.Module, batch: dict[str, torch.Tensor], adv: AttackResult | None,
                ctx: StepContext) -> torch.Tensor:
    """Cross-entropy of the answers, reduced as ``train.sft_reduction`` says (per row or per token)."""
    return response_nll(*_logps(model, batch, adv, ctx, pairs=False), ctx.run.train.sft_reduction)


def adversary_metrics(adv: AttackResult, passes: bool = False) -> dict[str, float]:
    """The attack's loss (none in free training) and norms; ``passes``: the input-gradient passes spent."""
    out = {"adv/attack_loss": float(adv.loss.mean())} if adv.loss.numel() else {}
    if passes:
        out["adv/passes"] = adv.passes
    for key, value in adv.norms.items():
        out[f"adv/{key}"] = float(value.max()) if torch.is_tensor(value) else float(value)
    return out


def dpo_step(ctx: StepContext, batch: dict[str, torch.Tensor], utility: dict[str, torch.Tensor] | None,
             log: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO / AR-DPO / AT-DPO / ADPO: the preference loss, the policy under attack when the method is
    adversarial (the module docstring maps the ADPO equation onto these lines)."""
    run, cfg = ctx.run, ctx.run.train
    loss_type, weight = cfg.preference_loss
    average = loss_type == "ipo"
    adv = attack(ctx, batch) if run.spec.adversarial else None
    with torch.no_grad(), ctx.policy.reference_model() as ref, dropout_off(ref):
        ref_c, ref_r, _, _ = pair_logps(ref, batch, adv if cfg.reference_input == "perturbed" else None, average,
                                        ctx)
    pol_c, pol_r, lp, mask = pair_logps(ctx.model, batch, adv, average, ctx)
    out = dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, loss_type, cfg.label_smoothing)
    loss = weight * out.losses.mean()
    metrics: dict[str, float] = {}
    if cfg.sft_weight > 0:  # TRL's "sft" loss: the token mean over the chosen answers
        n = pol_c.shape[0]
        chosen_sft = response_nll(lp[:n], mask[:n], "token")
        loss = loss + cfg.sft_weight * chosen_sft
        metrics["sft/chosen_ce"] = float(chosen_sft.detach())
    if utility is not None:
        util = sft_forward(ctx.model, utility, None, ctx)
        loss = loss + run.utility_weight * util
        metrics["sft/utility_ce"] = float(util.detach())
    if log:
        metrics.update(preference_metrics(out, pol_c, pol_r))
        if adv is not None:
            metrics["adv/margin_attacked"] = float((pol_c - pol_r).detach().mean())
            with torch.no_grad(), dropout_off(ctx.core):
                clean_c, clean_r, _, _ = pair_logps(ctx.core, batch, None, average, ctx)
            metrics["adv/margin_clean"] = float((clean_c - clean_r).mean())
            metrics.update(adversary_metrics(adv, cfg.cheaper_adversary))
        else:
            metrics["adv/margin_clean"] = float((pol_c - pol_r).detach().mean())
    return loss, metrics


def sft_or_at_step(ctx: StepContext, batch: dict[str, torch.Tensor] | None, utility: dict[str, torch.Tensor] | None,
                   log: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT on the chosen (safe) answer, clean (sft) or under the attack toward the rejected one (at; the
    module docstring maps the AT equation onto these lines). ``batch`` is None when a mixed AT batch
    (``train.at_stream: mixed``) drew no harmful row: its refusal term is 0, as in the official code."""
    run = ctx.run
    adv = attack(ctx, batch) if run.spec.adversarial and batch is not None else None
    refusal = sft_forward(ctx.model, halves(batch)[0], adv, ctx) if batch is not None else None
    util = sft_forward(ctx.model, utility, None, ctx) if utility is not None else None
    if run.spec.objective == "at":
        loss = at_loss(refusal, util, run.utility_weight, run.train.at_floor)
    else:
        loss = (refusal if refusal is not None else 0.0) + (run.utility_weight * util if util is not None else 0.0)
    metrics: dict[str, float] = {}
    if log and refusal is not None:
        metrics["sft/chosen_ce" if adv is None else "adv/chosen_ce_attacked"] = float(refusal.detach())
        if util is not None:
            metrics["sft/utility_ce"] = float(util.detach())
        if adv is not None:
            metrics.update(adversary_metrics(adv, run.train.cheaper_adversary))
    return loss, metrics


def step_fn(objective: str):
    return dpo_step if objective == "dpo" else sft_or_at_step
