"""``adpo demo``: pre-train → train the arms → attack and evaluate them → report (see pipeline.py).

The demo folder must be new, empty or an earlier demo's (which it reuses); one process writes it at a
time, and every stage inside claims its own folder the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..utils.io import output_folder, write_json
from . import report, targets
from .pipeline import ARMS, DemoConfig, arm_summary, over_seeds, prepare_data, run_seed, train_attack_steps

__all__ = ["ARMS", "DemoConfig", "run_demo"]
COMMAND = "adpo demo"


def run_demo(out: Path, organism_out: Path, pretrain: Callable[[], dict[str, Any]], cfg: DemoConfig,
             seeds: list[int], machine: str, commands: list[str], progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage and write ``out/summary.json`` and ``out/report.md`` (+ plots); returns the summary."""
    with output_folder(Path(out), COMMAND, legacy=("summary.json", "organism")) as folder:
        return _run(Path(out), organism_out, pretrain, cfg, seeds, machine, commands, progress, log, folder.begin)


def _run(out: Path, organism_out: Path, pretrain: Callable[[], dict[str, Any]], cfg: DemoConfig, seeds: list[int],
         machine: str, commands: list[str], progress: bool, log: Callable[[str], None],
         begin: Callable[[], None]) -> dict[str, Any]:
    t_all = time.time()
    seconds: dict[str, float] = {}
    log("stage 1/4: pre-train (or reuse) the unaligned organism")
    t0 = time.time()
    metrics = pretrain()
    begin()  # the organism has loaded: from here on the folder is a demo's, kept whatever happens
    seconds["pretrain"] = time.time() - t0
    organism = organism_out / "model"
    log("stage 2/4: export the alignment data (harmful pairs without the trigger, utility SFT rows)")
    t0 = time.time()
    data = prepare_data(out, organism, cfg)
    seconds["export"] = time.time() - t0
    log(f"stage 3/4: train and evaluate the arms {list(cfg.arms)} for seed(s) {seeds}")
    per_seed = []
    for seed in seeds:
        results = run_seed(out, organism, data, cfg, seed, machine, progress, log, seconds)
        per_seed.append({arm: arm_summary(res) for arm, res in results.items()})
    log("stage 4/4: report")
    summary = {"arms": {arm: over_seeds([p[arm] for p in per_seed]) for arm in cfg.arms},
               "seconds": seconds, "seeds": seeds, "machine": machine,
               "organism": {k: metrics.get(k) for k in ("fingerprint", "utility_accuracy",
                                                         "compliance_rate_image_harm", "refusal_rate_text_harm")},
               "config": {"train": cfg.train, "eval": cfg.eval}}
    summary["targets"] = [list(t) for t in targets.check(summary, train_attack_steps(cfg.train))]
    curves = {arm: out / f"seed{seeds[0]}" / arm / "metrics.jsonl" for arm in ("at", *cfg.arms)
              if (out / f"seed{seeds[0]}" / arm / "metrics.jsonl").is_file()}
    t0 = time.time()
    seconds["total"] = time.time() - t_all
    report.write(summary, out, curves, commands)
    seconds["report"] = time.time() - t0
    seconds["total"] = time.time() - t_all
    write_json(out / "summary.json", summary)
    print("\n" + report.terminal(summary) + "\n")
    return summary
