"""What an adversarial training step costs: ms/step of dpo, at and adpo at K attack steps, against the floor.

Prints one JSON object per line::

    {"method": ..., "K": ..., "ms_per_step": ..., "floor_ms": ..., "peak_rss_mb": ..., ...}

* ``ms_per_step``: median wall time of a real optimizer step of the training loop (``Session.step``,
  logging off), after warm-up steps;
* ``floor_ms``: the sum of the step's unavoidable passes, each timed alone on the same batch —
  K input-gradient passes of the attack (parameters frozen), the reference forward (DPO family), the
  policy forward/backward, and the utility forward/backward (AT) — so ``ms_per_step / floor_ms`` is the
  loop's overhead;
* ``peak_rss_mb``: peak resident memory of a fresh process that ran only this configuration (each
  configuration runs in its own subprocess, so peaks do not leak between them).

Usage: python benchmarks/step_cost.py [--organism runs/organism/model] [--data runs/export] [--steps 12]
The organism and export are built first if missing (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

COMBOS = [("dpo", 0)] + [(m, k) for m in ("at", "adpo") for k in (1, 3, 10)]


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(method: str, k: int, args) -> dict:
    from adpo.data.collate import halves, image_keys
    from adpo.threats import attack_mode, targeted_nll
    from adpo.trainer.config import RunConfig
    from adpo.trainer.loop import _to, setup
    from adpo.trainer.steps import pair_logps, sft_forward

    torch.set_num_threads(args.threads)
    raw = {"method": method, "model": str(args.organism), "data": str(args.data / "preference_train.jsonl"),
           "utility_data": str(args.data / "sft_train.jsonl"), "out": "unused",
           "train": {"steps": args.steps + 3, "batch_size": args.batch, "utility_batch_size": args.batch,
                     "lr": 1e-4, "threat": "image"},
           "image": {"eps": 0.2, "step_size": 0.05, "steps": max(k, 1), "random_start": True, "keep_best": False}}
    if method == "adpo":
        raw["reference"] = str(args.reference)
    s = setup(RunConfig.from_dict(raw))
    times = []
    for i in range(args.steps + 3):
        t0 = time.perf_counter()
        s.step(i, log=False)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)

    # the floor, pass by pass, on one batch
    batch = _to(s.stream.batch(0), s.acc.device)
    chosen, rejected = halves(batch)
    core, ctx = s.ctx.core, s.ctx
    objective = targeted_nll(rejected)
    pv = image_keys(batch)["pixel_values"]

    def input_grad():
        with attack_mode(core):
            x = pv.clone().requires_grad_(True)
            torch.autograd.grad(objective(core, {"pixel_values": x}).sum(), [x])

    def ref_forward():
        with torch.no_grad(), s.policy.reference_model() as ref:
            pair_logps(ref, batch, None, False, ctx)

    def policy_fwd_bwd():
        c, r, _, _ = pair_logps(s.model, batch, None, False, ctx)
        (c - r).sum().backward()
        s.optimizer.zero_grad(set_to_none=True)

    def chosen_fwd_bwd():
        sft_forward(s.model, chosen, None, ctx).backward()
        s.optimizer.zero_grad(set_to_none=True)

    def utility_fwd_bwd():
        sft_forward(s.model, _to(s.util_stream.batch(0), s.acc.device), None, ctx).backward()
        s.optimizer.zero_grad(set_to_none=True)

    reps = args.floor_reps
    if method == "at":
        parts = {"attack_pass": input_grad, "policy": chosen_fwd_bwd, "utility": utility_fwd_bwd}
    else:
        parts = {"attack_pass": input_grad, "reference": ref_forward, "policy": policy_fwd_bwd}
    part_ms = {name: _median_ms(fn, reps) for name, fn in parts.items()}
    floor = k * part_ms["attack_pass"] + sum(v for n, v in part_ms.items() if n != "attack_pass")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "K": k, "ms_per_step": round(ms, 1), "floor_ms": round(floor, 1),
            "overhead": round(ms / floor, 2), "peak_rss_mb": round(peak, 1),
            "parts_ms": {n: round(v, 1) for n, v in part_ms.items()}, "batch_pairs": args.batch,
            "threads": args.threads, "steps_timed": args.steps}


def ensure_inputs(args) -> None:
    from adpo.organism.export import export
    from adpo.organism.pretrain import pretrain

    if not (args.organism / "config.json").exists():
        pretrain(args.organism.parent)
    if not (args.data / "preference_train.jsonl").exists():
        export(args.data)
    if not (args.reference / "adapter" / "adapter_config.json").exists():
        from adpo.trainer.config import RunConfig
        from adpo.trainer.loop import train

        train(RunConfig.from_dict({
            "method": "at", "model": str(args.organism), "data": str(args.data / "preference_train.jsonl"),
            "utility_data": str(args.data / "sft_train.jsonl"), "out": str(args.reference),
            "train": {"steps": 10, "batch_size": args.batch, "lr": 1e-3},
            "image": {"steps": 3, "step_size": 0.05}}), progress=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organism", type=Path, default=Path("runs/organism/model"))
    ap.add_argument("--data", type=Path, default=Path("runs/export"))
    ap.add_argument("--reference", type=Path, default=Path("runs/bench-at"), help="AT run for adpo (made if missing)")
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps per configuration")
    ap.add_argument("--floor-reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)), flush=True)
        return 0
    ensure_inputs(args)
    print(json.dumps({"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}"}),
          flush=True)
    rows = {}
    for method, k in COMBOS:
        cmd = [sys.executable, __file__, "--one", method, str(k), *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        line = res.stdout.strip().splitlines()[-1]
        rows[(method, k)] = json.loads(line)
        print(line, flush=True)
    dpo = rows[("dpo", 0)]
    for k in (1, 3, 10):
        a = rows[("adpo", k)]
        print(json.dumps({"summary": f"adpo K={k}", "adpo_over_dpo": round(a["ms_per_step"] / dpo["ms_per_step"], 2),
                          "adpo_over_floor": a["overhead"],
                          "rss_adpo_over_dpo": round(a["peak_rss_mb"] / dpo["peak_rss_mb"], 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
