"""What an adversarial training step costs: ms/step of dpo, at and adpo at K attack steps, against the floor.

Prints one JSON object per line::

    {"method": ..., "K": ..., "variant": ..., "ms_per_step": ..., "floor_ms": ..., "over_floor": ..., ...}

* ``ms_per_step``: median wall time of a real optimizer step of the training loop (``Session.step``,
  logging off), after warm-up steps, with its min–max over the timed steps;
* ``floor_ms``: the sum of the step's unavoidable passes, on the same batch — K input-gradient passes of
  the attack (parameters frozen), the reference forward (DPO family), the policy forward/backward, and
  the utility forward/backward (AT). Each pass is timed *in the same run, interleaved with the steps*
  (one step, then one of each pass, repeated), so host load drifts hit both alike; medians, min–max;
* ``over_floor``: ms_per_step / floor_ms, the loop's overhead (the adversary's bookkeeping, the
  perturbation's encode, the attack's final loss evaluation);
* ``peak_rss_mb``: peak resident memory of a fresh process that ran only this configuration (each
  configuration runs in its own subprocess, so peaks do not leak between them); ``step_peak_mb``: that
  peak over the process's resident memory once set up (what the steps themselves added).

``--variants`` adds ADPO with the cheaper adversaries of ``adpo.trainer.adversary`` at K = 3 (persistent,
early stop, free replays): their floor counts the attack passes they actually spent (``adv/passes``).

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

VARIANTS = {"persistent": {"persistent_perturbations": True},
            "early-stop": {},  # attack_stop_below from --stop-below
            "free-2": {"free_replays": 2}}
EXTRA = [("adpo", 3, name) for name in VARIANTS]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(1000 * statistics.median(values), 1), "min": round(1000 * min(values), 1),
            "max": round(1000 * max(values), 1)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(method: str, k: int, variant: str, args) -> dict:
    from adpo.data.collate import halves, image_keys
    from adpo.threats import attack_mode, targeted_nll
    from adpo.trainer.config import RunConfig
    from adpo.trainer.loop import _to, setup
    from adpo.trainer.steps import pair_logps, sft_forward

    torch.set_num_threads(args.threads)
    raw = {"method": method, "model": str(args.organism), "data": str(args.data / "preference_train.jsonl"),
           "utility_data": str(args.data / "sft_train.jsonl"), "out": "unused",
           "train": {"steps": args.steps + 3, "batch_size": args.batch, "utility_batch_size": args.batch,
                     "lr": 1e-4, "threat": "image", **VARIANTS.get(variant, {}),
                     **({"attack_stop_below": args.stop_below} if variant == "early-stop" else {})},
           "image": {"eps": 0.2, "step_size": 0.05, "steps": max(k, 1), "random_start": True, "keep_best": False}}
    if method == "adpo":
        raw["reference"] = str(args.reference)
    s = setup(RunConfig.from_dict(raw))
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

    if method == "at":
        parts = {"attack_pass": input_grad, "policy": chosen_fwd_bwd, "utility": utility_fwd_bwd}
    else:
        parts = {"attack_pass": input_grad, "reference": ref_forward, "policy": policy_fwd_bwd}
    rss0 = _rss_mb()
    step_times: list[float] = []
    part_times: dict[str, list[float]] = {name: [] for name in parts}
    passes: list[float] = []
    for i in range(args.steps + 3):  # one step, then one of each pass: interleaved, so drift hits all alike
        spent = s.ctx.adversary.passes
        t0 = time.perf_counter()
        s.step(i, log=False)
        if i < 3:
            continue  # warm-up
        step_times.append(time.perf_counter() - t0)
        passes.append(s.ctx.adversary.passes - spent)
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            part_times[name].append(time.perf_counter() - t0)
    part_ms = {n: _spread(v) for n, v in part_times.items()}
    spent = statistics.mean(passes)  # attack passes per step (fewer than K with early stop, 0 free)
    floor = [spent * a + sum(part_times[n][j] for n in parts if n != "attack_pass")
             for j, a in enumerate(part_times["attack_pass"])]
    floor_ms = _spread(floor)
    step_ms = _spread(step_times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "K": k, "variant": variant or "plain", "ms_per_step": step_ms,
            "floor_ms": floor_ms, "over_floor": round(step_ms["median"] / floor_ms["median"], 2),
            "attack_passes_per_step": round(spent, 2), "peak_rss_mb": round(peak, 1),
            "step_peak_mb": round(max(0.0, peak - rss0), 1), "parts_ms": part_ms, "batch_pairs": args.batch,
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
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps (and passes) per configuration")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--ks", default="1,3,10", help="attack steps K of at and adpo")
    ap.add_argument("--variants", action="store_true", help="add adpo K=3 with the cheaper adversaries")
    ap.add_argument("--stop-below", type=float, default=2.5, help="the early-stop variant's threshold (rejected "
                                                                  "answer's NLL, nats)")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "K", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.one[2].replace("plain", ""), args)),
              flush=True)
        return 0
    ensure_inputs(args)
    print(json.dumps({"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}"}),
          flush=True)
    ks = [int(k) for k in args.ks.split(",")]
    combos = [("dpo", 0, "")] + [(m, k, "") for m in ("at", "adpo") for k in ks] + (EXTRA if args.variants else [])
    rows = {}
    for method, k, variant in combos:
        cmd = [sys.executable, __file__, "--one", method, str(k), variant or "plain", *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        line = res.stdout.strip().splitlines()[-1]
        rows[(method, k, variant)] = json.loads(line)
        print(line, flush=True)
    dpo = rows[("dpo", 0, "")]
    for (method, k, variant), a in rows.items():
        if method != "adpo":
            continue
        print(json.dumps({"summary": f"adpo K={k} {variant or 'plain'}",
                          "adpo_over_dpo": round(a["ms_per_step"]["median"] / dpo["ms_per_step"]["median"], 2),
                          "adpo_over_floor": a["over_floor"],
                          "rss_adpo_over_dpo": round(a["peak_rss_mb"] / dpo["peak_rss_mb"], 3),
                          "step_peak_adpo_minus_dpo_mb": round(a["step_peak_mb"] - dpo["step_peak_mb"], 1)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
