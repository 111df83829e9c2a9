"""The one training loop, on accelerate, for every method (not a TRL subclass: ecosystem.md §0).

Gradient accumulation, warm-up + schedule, clipping and mixed precision come from accelerate (launch
configs in ``configs/accelerate/``); attacks run on the unwrapped model; batches are a pure function of
the step (exact resume, DDP sharding). ``train(run)`` writes ``OUT/adapter`` (or ``OUT/model``),
``OUT/metrics.jsonl``, ``OUT/config.yaml``, ``OUT/checkpoints/`` and ``OUT/training_curves.png``.

Nothing is written before the data and the models have loaded and passed their checks (images decoded,
pairs that teach nothing, prompts against the model's context, an initial adapter's base): a refused run
leaves ``OUT`` as it was. ``OUT`` must be new, empty or an earlier ``adpo train`` output, and one process
writes it at a time (:func:`adpo.utils.io.output_folder`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.collate import check_lengths
from ..data.formats import DataError, PairRow, load_rows
from ..data.stream import BatchStream, MixedStream
from ..data.templates import use_template
from ..models.adapters import (
    build_policy,
    check_adapter_base,
    enable_checkpointing,
    load_base,
    resolve_run,
    save_trained,
)
from ..models.families import inspect_model
from ..objectives.logps import resolve_chunk
from ..threats.codecs import codec_for
from ..utils.config import ConfigError
from ..utils.io import atomic_text, output_folder
from . import checkpoint
from .adversary import Adversary
from .config import RunConfig
from .evaluation import BEST_METRIC, evaluate, held_out
from .steps import StepContext, step_fn
from .tracking import MetricsLog, log_with, plot_curves, start_trackers

COMMAND = "adpo train"


def write_config(run: RunConfig, path: Path) -> None:
    atomic_text(path, yaml.safe_dump(run.to_dict(), sort_keys=False))


def check_resume_config(run: RunConfig, path: Path) -> None:
    """A resumed run must be the same run: differing options would silently mix two recipes."""
    if not path.exists():
        return
    saved = yaml.safe_load(path.read_text())
    now = yaml.safe_load(yaml.safe_dump(run.to_dict(), sort_keys=False))
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ConfigError(f"--resume: options differ from {path} in {diff}; use a new --out or the same options")


def _models(run: RunConfig):
    """Base model + processor, and the policy with its reference, as the method asks."""
    start = run.reference or run.init
    dtype = getattr(torch, run.train.model_dtype)  # explicit: transformers 5 would load a checkpoint's fp16
    if not run.lora.enabled and start:  # full fine-tuning starts from the given model folder itself
        base, processor = load_base(resolve_run(start), dtype)
        init = None
    else:
        base, processor = load_base(run.model, dtype)
        init = resolve_run(start) if start else None
        if init is not None:
            check_adapter_base(init, run.model)
    use_template(processor, run.train.template)  # saved with the adapter: evaluation renders the same prompts
    if run.train.gradient_checkpointing:
        enable_checkpointing(base)
    reference = "init" if run.spec.reference in ("init", "at") else "none"
    merge = run.train.policy_init == "merge" and run.spec.reference == "at"  # merge the AT adapter, fresh LoRA
    return build_policy(base, run.lora, init, reference, merge), processor


def logps_chunk(run: RunConfig, acc, model) -> int:
    """The log-prob chunk size; chunking projects through the output head outside the forward, which a
    parameter-sharding engine (FSDP, ZeRO-3) does not allow."""
    chunk = resolve_chunk(model, run.train.logps_chunk)
    deepspeed = acc.state.deepspeed_plugin
    sharded = acc.distributed_type.name == "FSDP" or (deepspeed is not None and deepspeed.zero_stage == 3)
    if chunk and sharded:
        if run.train.logps_chunk:
            raise ConfigError(f"train.logps_chunk={chunk} needs the full output head outside the forward, which "
                              f"{acc.distributed_type.name} shards; set train.logps_chunk=0 (or use DDP / ZeRO-2)")
        return 0
    return chunk


def check_engine(acc) -> None:
    """Refuse a launch that accelerate quietly runs as something else: each of N launched processes
    training alone (``NO``: N copies of one run writing one folder), or FSDP / DeepSpeed asked for and
    plain DDP run (accelerate 1.15 enables FSDP only on accelerator devices, so on CPU it runs MULTI_CPU)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and acc.num_processes != launched:
        raise ConfigError(f"launched as {launched} processes, but accelerate runs each alone "
                          f"({acc.distributed_type.name}); on a machine without GPUs launch CPU DDP with "
                          "ACCELERATE_USE_CPU=1 (docs/models.md, 'Scaling out')")
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() in ("1", "true") and \
                acc.distributed_type.name != engine:
            raise ConfigError(f"the launch config asks for {engine}, but accelerate runs "
                              f"{acc.distributed_type.name} on {acc.device.type}: {engine} needs GPUs "
                              "(docs/models.md, 'Scaling out')")


def configure_deepspeed(ds: dict[str, Any], cfg) -> None:
    """What DeepSpeed would otherwise take from elsewhere than ``train``: the micro-batch (no dataloader is
    prepared, so it cannot infer it) and the clipping norm (DeepSpeed clips inside its engine with its own
    config's value and ``clip_grad_norm_`` returns None; a config without one, like zero3.yaml, would not
    clip at all)."""
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_clipping"] = cfg.max_grad_norm


def check_pairs(pairs: list[PairRow], source: str, allow: bool, log: Callable[[str], None] = print) -> None:
    """Refuse pairs whose chosen and rejected answers are the same text: they teach nothing (the DPO loss is
    log 2 with a zero gradient whatever the model does), and a file of them is a broken export that would
    otherwise train silently. ``train.allow_degenerate_pairs=true`` keeps them, with a count."""
    same = [r for r in pairs if " ".join(r.chosen.split()) == " ".join(r.rejected.split())]
    if not same:
        return
    count = f"{len(same)} of {len(pairs)} pairs in {source} have the same chosen and rejected text"
    if allow:
        log(f"warning: {count} (kept: train.allow_degenerate_pairs=true)")
        return
    raise DataError(f"{same[0].source}: field 'rejected': same text as 'chosen' ({count}); such pairs teach "
                    "nothing: fix the data, or set train.allow_degenerate_pairs=true to keep them")


def context_length(model) -> int | None:
    """The text decoder's ``max_position_embeddings`` (None when the config has none)."""
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "max_position_embeddings", None)


@dataclass
class Session:
    """A prepared run: models, data streams, optimizer and schedule. ``step(i)`` is one optimizer step."""

    run: RunConfig
    acc: Any
    policy: Any
    processor: Any
    stream: BatchStream
    util_stream: BatchStream | None
    model: Any
    optimizer: Any
    scheduler: Any
    params: list
    ctx: StepContext
    total: int
    held_out: list  # BatchStreams of the held-out pairs (evaluation.held_out); [] without train.eval_every
    last_eval: dict = field(default_factory=dict)  # the latest evaluation's metrics (for the model card)

    def step(self, step: int, log: bool) -> dict[str, float]:
        """Optimizer step ``step`` (0-based): ``grad_accum`` micro-batches, clip, update, schedule."""
        cfg, acc = self.run.train, self.acc
        step_once = step_fn(self.run.spec.objective)
        logged: dict[str, float] = {"loss": 0.0}
        adversary = self.ctx.adversary
        for micro in range(cfg.grad_accum):
            m = step * cfg.grad_accum + micro
            self.ctx.generator.manual_seed((cfg.seed * 1_000_003 + m) * 1_009 + acc.process_index)
            d = adversary.data_index(m)  # m itself unless free training replays batches
            batch, utility = self.stream.parts(d)
            batch, utility = _to(batch, acc.device), _to(self.util_stream.batch(d) if self.util_stream else utility,
                                                        acc.device)
            adversary.begin(m, [i for i in self.stream.indices(d) if isinstance(self.stream.rows[i], PairRow)])
            with acc.accumulate(self.model):
                loss, metrics = step_once(self.ctx, batch, utility, log and micro == cfg.grad_accum - 1)
                acc.backward(loss)
                adversary.after_backward()
                if acc.sync_gradients:
                    norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    if norm is not None:  # DeepSpeed clips inside its engine and returns None
                        logged["grad_norm"] = float(norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            logged.update(metrics)
            logged["loss"] += float(loss.detach()) / cfg.grad_accum
        self.scheduler.step()
        return logged


def setup(run: RunConfig) -> Session:
    """Load and check data and models and prepare them on accelerate (no files written)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from transformers import get_scheduler

    cfg = run.train
    trackers = log_with(cfg.report_to)  # a named tracker that is not installed is refused here
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, log_with=trackers or None,
                      project_config=ProjectConfiguration(project_dir=run.out, logging_dir=str(Path(run.out) / "runs")))
    check_engine(acc)
    set_seed(cfg.seed)
    pairs = load_rows(run.data, "pairs")
    check_pairs(pairs, run.data, cfg.allow_degenerate_pairs, acc.print)
    utility_rows = load_rows(run.utility_data, "sft") if run.utility_weight > 0 else None
    policy, processor = _models(run)
    for rows in filter(None, (pairs, utility_rows)):
        check_lengths(processor, rows, context_length(policy.model), cfg.max_length, cfg.image_size)
    held = held_out(run, processor, context_length(policy.model))
    mixed = is_mixed(run) and utility_rows is not None
    stream = (MixedStream if mixed else BatchStream)(pairs + utility_rows if mixed else pairs, processor,
                                                     cfg.batch_size, cfg.seed, cfg.max_length, acc.process_index,
                                                     acc.num_processes, cfg.image_size)
    util_stream = (BatchStream(utility_rows, processor, cfg.utility_batch_size, cfg.seed + 1, cfg.max_length,
                               acc.process_index, acc.num_processes, cfg.image_size)
                   if utility_rows and not mixed else None)
    total = total_steps(run, len(pairs), len(utility_rows or ()), acc.num_processes)
    optimizer = torch.optim.AdamW([p for _, p in policy.trainable()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
    if acc.state.deepspeed_plugin is not None:
        configure_deepspeed(acc.state.deepspeed_plugin.deepspeed_config, cfg)
    model, optimizer = acc.prepare(policy.model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP2 replaces them with sharded ones
    acc.register_for_checkpointing(scheduler)  # restored by save_state/load_state under DeepSpeed
    if policy.ref_copy is not None:
        policy.ref_copy.to(acc.device)
    ctx = StepContext(run, model, acc.unwrap_model(model), policy, codec_for(processor), torch.Generator(),
                      acc.autocast, logps_chunk(run, acc, policy.model), Adversary(cfg))
    info = inspect_model(policy.model, warn=False)
    _say(acc, f"# model: {info.family} ({info.model_type}), {info.n_layers} decoder layers x {info.hidden_size}, "
              f"vocab {info.vocab_size}, {type(ctx.codec).__name__}; log-probs "
              + (f"in chunks of {ctx.chunk} tokens" if ctx.chunk else "from full logits"))
    model.train()
    return Session(run, acc, policy, processor, stream, util_stream, model, optimizer, scheduler, params, ctx, total,
                   held)


def resume_point(out: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint to resume from: the latest in ``OUT/checkpoints`` (``resume`` True, or ``OUT`` itself),
    or the ``OUT/checkpoints/step-N`` folder given (TRL's ``resume_from_checkpoint=PATH``); None: none yet."""
    found = checkpoint.checkpoints(out / "checkpoints")
    if resume is True or Path(resume).resolve() == out.resolve():
        return found[-1][1] if found else None
    wanted = Path(resume).resolve()
    for _, path in found:
        if path.resolve() == wanted:
            return path
    raise ConfigError(f"--resume {resume}: not a complete checkpoint of {out / 'checkpoints'} (have: "
                      f"{[p.name for _, p in found] or 'none'})")


def train(run: RunConfig, resume: bool | Path = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary (steps, seconds, output paths). ``resume``: True
    (the latest checkpoint) or a checkpoint folder of ``run.out``."""
    out = Path(run.out)
    # every rank checks the folder, so a refusal never leaves the others waiting; the main one locks it
    with output_folder(out, COMMAND, legacy=("config.yaml",), writer=int(os.environ.get("RANK", "0")) == 0) as o:
        if resume:
            check_resume_config(run, out / "config.yaml")
            resume_point(out, resume)  # a wrong checkpoint path is refused before any work
        elif checkpoint.checkpoints(out / "checkpoints"):
            raise ConfigError(f"{out} holds checkpoints of an earlier run; pass --resume to continue it, "
                              "or choose a new --out (nothing is overwritten)")
        s = setup(run)
        o.begin(method=run.method)
        return _run(run, s, resume, progress)


def _run(run: RunConfig, s: Session, resume: bool | Path, progress: bool) -> dict[str, Any]:
    out = Path(run.out)
    acc, cfg, total = s.acc, run.train, s.total
    if acc.is_main_process:
        write_config(run, out / "config.yaml")
        start_trackers(acc, run.to_dict(), out)
    log = MetricsLog(out / "metrics.jsonl", acc) if acc.is_main_process else None
    start = 0
    if resume:
        point = resume_point(out, resume)
        if point is not None:
            start = checkpoint.load(point, acc, s.model, s.optimizer, s.scheduler, s.ctx.adversary)
            _say(acc, f"resumed from {point} (step {start} of {total})")
        else:
            _say(acc, f"--resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")
    if log is not None and start:
        log.truncate(start)
    elif log is not None:
        log.path.unlink(missing_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=f"train {run.method}", disable=not (progress and acc.is_main_process),
               dynamic_ncols=True)
    t_start = time.time()
    for step in range(start, total):
        t0 = time.time()
        is_log = (step + 1) % cfg.log_every == 0 or step + 1 == total
        logged = s.step(step, is_log)
        if is_log:
            seen = s.ctx.adversary.data_index((step + 1) * cfg.grad_accum - 1) + 1  # micro-batches of data read
            logged.update({"learning_rate": s.scheduler.get_last_lr()[0], "time/step_s": round(time.time() - t0, 4),
                           "epoch": round(s.stream.epochs(seen), 4)})
            logged = _mean_across(acc, logged)
            if log is not None:
                log.write(step + 1, logged)
            bar.set_postfix({k: f"{logged[k]:.3g}" for k in ("loss", "adv/margin_attacked", "adv/margin_clean")
                             if k in logged})
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == total):
            _evaluate(s, step + 1, log)
        bar.update(1)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == total:
            checkpoint.save(out / "checkpoints", step + 1, acc, s.model, s.optimizer, s.scheduler,
                            cfg.keep_checkpoints, s.ctx.adversary)
    bar.close()
    summary = {"method": run.method, "steps": total, "resumed_from": start, "seconds": round(time.time() - t_start, 2),
               "processes": acc.num_processes, "distributed_type": acc.distributed_type.name,
               "pairs": len(s.stream.rows),
               "epochs": round(s.stream.epochs(s.ctx.adversary.data_index(total * cfg.grad_accum - 1) + 1), 3)}
    # sharded engines gather the full weights collectively (every rank), then the main process writes
    state = checkpoint.full_state(acc, s.model)
    if acc.is_main_process:
        summary["saved"] = str(save_trained(s.policy, s.processor, out, {**summary, "config": run.to_dict(),
                                                                          "eval": s.last_eval},
                                            state_dict=state, base=run.model))
        log.close()
        summary["plot"] = str(plot_curves(out / "metrics.jsonl", out / "training_curves.png", f"adpo {run.method}"))
    acc.wait_for_everyone()
    return summary


def is_mixed(run: RunConfig) -> bool:
    """AT batches drawn from one shuffled stream of pairs and utility rows (``train.at_stream: mixed``)."""
    return run.spec.objective == "at" and run.train.at_stream == "mixed" and run.utility_weight > 0


def total_steps(run: RunConfig, n_pairs: int, n_utility: int, processes: int = 1) -> int:
    """Optimizer steps of a run: ``train.steps``, else ``epochs`` passes over the stream's rows (the pairs;
    pairs and utility rows together in a mixed AT stream: 2 epochs of 200 + 500 rows at batch 4 = 350)."""
    cfg = run.train
    rows = n_pairs + (n_utility if is_mixed(run) else 0)
    return cfg.steps or max(1, math.ceil(cfg.epochs * rows / (cfg.batch_size * processes * cfg.grad_accum)))


def _evaluate(s: Session, step: int, log: MetricsLog | None) -> None:
    """Score the held-out pairs (every rank the same pairs), log ``eval/*``, keep the best adapter."""
    import json

    metrics = s.last_eval = evaluate(s.ctx, s.held_out, step)
    if log is not None:
        log.write(step, metrics)
    _say(s.acc, f"step {step}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
    if not s.run.train.keep_best or BEST_METRIC not in metrics:
        return
    out = Path(s.run.out)
    record = out / "best" / "best.json"
    best = json.loads(record.read_text())[BEST_METRIC] if record.is_file() else -math.inf
    if metrics[BEST_METRIC] <= best:
        return
    state = checkpoint.full_state(s.acc, s.model)
    if s.acc.is_main_process:
        from ..utils.io import write_json

        (out / "best").mkdir(exist_ok=True)
        save_trained(s.policy, s.processor, out / "best", {"step": step, "metrics": metrics,
                                                            "config": s.run.to_dict()},
                     state_dict=state, base=s.run.model)
        write_json(record, {"step": step, **metrics})
    s.acc.wait_for_everyone()


def _say(acc, message: str) -> None:
    """An informational line from the main process, through the ``adpo`` logger (``--quiet`` hides it)."""
    if acc.is_main_process:
        logging.getLogger("adpo").info(message)


def _to(batch: dict[str, torch.Tensor] | None, device) -> dict[str, torch.Tensor] | None:
    return None if batch is None else {k: v.to(device) for k, v in batch.items()}


def _mean_across(acc, metrics: dict[str, float]) -> dict[str, float]:
    """Average logged scalars over processes, so the log describes the global batch."""
    if acc.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], device=acc.device)
    t = acc.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))
