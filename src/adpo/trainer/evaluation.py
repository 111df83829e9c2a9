"""Evaluation during training: "how robust is it now?" on held-out pairs, every ``train.eval_every`` steps.

Each evaluation scores up to ``train.eval_limit`` pairs of ``--eval-data`` twice:

* clean: the policy's margin log π(chosen) − log π(rejected) (``eval/margin_clean``) and, for the DPO
  family, TRL's ``eval_rewards/chosen|rejected|margins|accuracies`` and ``eval_loss`` (β-scaled log-ratios
  against the reference on the clean input, as TRL's ``DPOTrainer.evaluate`` logs them);
* under a short attack: the training adversary (``train.threat``, ``train.attack_objective``, its section
  settings) run for ``train.eval_attack_steps`` steps against the current policy. ``eval/margin_attacked``
  is the margin under it and ``eval/attack_success`` the fraction of pairs whose attacked policy prefers
  the rejected (harmful) answer (margin < 0): a quick, generation-free stand-in for the ASR of ``adpo eval``,
  which stays the measurement to report.

The model is put in eval mode for the pass (no dropout) and the attack draws from its own generator, so
an evaluation does not change the training that follows it (tests/trainer/test_evaluation.py).
``train.keep_best`` keeps the adapter with the highest ``eval/margin_attacked`` in ``OUT/best``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data.collate import check_lengths
from ..data.formats import load_rows
from ..data.stream import BatchStream
from ..objectives.preference import dpo_loss
from .config import RunConfig
from .steps import StepContext, attack, pair_logps

BEST_METRIC = "eval/margin_attacked"


def held_out(run: RunConfig, processor: Any, context: int | None) -> list[BatchStream]:
    """The first ``train.eval_limit`` pairs of ``--eval-data`` (checked like the training pairs) in batches of
    ``train.batch_size``, each pair once (one one-batch stream per chunk); [] without ``train.eval_every``."""
    if not run.train.eval_every:
        return []
    cfg = run.train
    rows = load_rows(run.eval_data, "pairs")[: cfg.eval_limit]
    check_lengths(processor, rows, context, cfg.max_length, cfg.image_size)
    return [BatchStream(rows[s: s + cfg.batch_size], processor, len(rows[s: s + cfg.batch_size]), cfg.seed,
                        cfg.max_length, 0, 1, cfg.image_size) for s in range(0, len(rows), cfg.batch_size)]


def _short_attack(run: RunConfig) -> RunConfig:
    """The run with every threat section's ``steps`` set to ``train.eval_attack_steps``."""
    steps = run.train.eval_attack_steps
    return dataclasses.replace(run, threats={n: dataclasses.replace(t, steps=steps) for n, t in run.threats.items()})


def evaluate(ctx: StepContext, chunks: list[BatchStream], step: int) -> dict[str, float]:
    """The ``eval/*`` and ``eval_rewards/*`` means over the held-out pairs at optimizer step ``step``."""
    run = ctx.run
    short = dataclasses.replace(ctx, run=_short_attack(run), generator=torch.Generator(), adversary=None)
    short.generator.manual_seed(run.train.seed * 7_919 + step)
    device = next(ctx.core.parameters()).device
    average = run.train.loss_type == "ipo"
    sums: dict[str, float] = {}
    was_training = ctx.core.training
    ctx.core.eval()
    try:
        for chunk in chunks:
            batch = {k: v.to(device) for k, v in chunk.batch(0).items()}
            with torch.no_grad():
                pol_c, pol_r, _, _ = pair_logps(ctx.core, batch, None, average, ctx)
            metrics = {"eval/margin_clean": pol_c - pol_r}
            if run.spec.reference != "none":
                with torch.no_grad(), ctx.policy.reference_model() as ref:
                    ref_c, ref_r, _, _ = pair_logps(ref, batch, None, average, ctx)
                out = dpo_loss(pol_c, pol_r, ref_c, ref_r, run.train.beta, run.train.loss_type,
                               run.train.label_smoothing)
                metrics.update({"eval_loss": out.losses, "eval_rewards/chosen": out.chosen_rewards,
                                "eval_rewards/rejected": out.rejected_rewards,
                                "eval_rewards/margins": out.chosen_rewards - out.rejected_rewards,
                                "eval_rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float()})
            if run.train.eval_attack_steps:
                adv = attack(short, batch)
                with torch.no_grad():
                    att_c, att_r, _, _ = pair_logps(ctx.core, batch, adv, average, ctx)
                metrics.update({BEST_METRIC: att_c - att_r, "eval/attack_success": (att_c < att_r).float()})
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().float().sum())
    finally:
        ctx.core.train(was_training)
    return {k: v / sum(len(c.rows) for c in chunks) for k, v in sums.items()}
