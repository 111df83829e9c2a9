"""Regenerate docs/results.md: the demo on several organism instances × training seeds, the targets checked
on every instance.

Usage: python benchmarks/results.py --out runs/results [--organism-seeds 0,1,2] [--seeds 1] [--jobs 2]
       [--skip-runs] [overrides ...]
Runs ``adpo demo --out OUT/organism-seed<S> --seed S --seeds N`` for every organism seed S (``--jobs`` at a
time, each process with cores / jobs threads), gathers the instances' summaries as ``adpo demo
--organism-seeds`` does (OUT/summary.json, OUT/report.md; :mod:`adpo.demo.instances`), and writes
docs/results.md from it. An organism instance is what another machine's last bits give (issue 15):
a claim holds only if it holds on each. ``--skip-runs`` only rewrites the document from what OUT holds.
docs/results/after.md (checks run by hand after the benchmark, with their commands) is copied in as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def masking(s: dict) -> list[str]:
    """The gradient-masking checks: behaviours only a gradient-free or transfer attack found, and the painted
    trigger against the unconstrained white-box attack (docs/evaluation.md)."""
    from adpo.eval.report import is_masking_check

    lines = []
    for arm, a in s["arms"].items():
        for sub, counts in (a.get("found_by") or {}).items():
            for check, n in (counts or {}).items():
                if n and is_masking_check(check):
                    lines.append(f"- {arm}, `{sub}`: `{check}` found {n:g} behaviour(s) the white-box attacks missed")
        trig, blank = a["asr"].get("trigger"), a["asr"].get("pgd-blank")
        if trig is not None and blank is not None and trig > blank:
            lines.append(f"- {arm}: `trigger` {pct(trig)} beats `pgd-blank` {pct(blank)}")
    return lines or ["None fired: no behaviour fell to the random search or to a transfer attack after every "
                     "white-box attack failed, and `trigger` never beat `pgd-blank`."]


def write_doc(out: Path, seconds: dict[str, float], command: str) -> Path:
    from adpo.demo import report
    from adpo.demo.instances import quality
    from adpo.demo.pipeline import ARMS

    def ordered(arms: dict) -> dict:
        return {a: arms[a] for a in ARMS if a in arms}  # summary.json is written with sorted keys

    s = json.loads((out / "summary.json").read_text())
    s["arms"] = ordered(s["arms"])
    recipe = s.get("config", {}).get("train") or {}
    t = recipe.get("train", {})
    seeds = s["seeds"]
    ev = s.get("config", {}).get("eval", {})
    pgd = ev.get("pgd_image", {})
    lines = ["# Measured results: the paper's comparison on several organism instances", "",
             f"Regenerate: `{command}` (wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
             + ").", "",
             f"Machine: {s['machine']}. Organism instances (pre-training seeds) {s['organism_seeds']}, each "
             f"pre-trained from scratch: what another machine's last bits do (issue 15). Training seeds {seeds} "
             "per instance (each retrains every arm and re-runs every attack). Held-out intents/templates: "
             f"{ev.get('limit')} requests per attack, grouped into behaviours "
             "by intent (ASR per behaviour, then across behaviours; [low, high] = Wilson 95% interval, over "
             "instances or seeds the envelope of their intervals); utility and over-refusal on "
             f"{ev.get('benign_limit', 256)} held-out rows each. Arms: {', '.join(s['arms'])}.", "",
             "Attacks (every arm, adaptive, white-box against the arm itself), each subtask the **strong "
             "suite** (docs/evaluation.md: sign PGD, then Auto-PGD on the target NLL (2 restarts), on the "
             "margin against the refusal and on the first 4 target tokens, signed Adam on a CW margin, each "
             "with twice the steps, then a gradient-free random search and transfer attacks from the base and "
             "DPO arms; a behaviour counts if any attack succeeds at any checkpoint): `pgd-blank` = HarmBench "
             f"MMPGDBlank (grey image, unconstrained, {pgd.get('blank_steps')} steps); `pgd-image@ε` = L∞ on the "
             f"behaviour's image with random start ({pgd.get('steps')} steps, checkpoints every "
             f"{ev.get('check_every')}); `latent@x` = residual stream after the second-to-last layer, per-token "
             f"L2 budget x × the median token norm ({ev.get('latent', {}).get('steps')} steps); `trigger` = "
             "the world's checkerboard painted at its pre-training amplitudes, no search; `figstep` = "
             "typographic image (the organism cannot read it). † = not converged: the ASR at half the budget "
             "differs by more than 2 points. The organism judge decides.", "",
             f"Recipe (every arm, `configs/organism.yaml`): LoRA r {recipe.get('lora', {}).get('r')}, "
             f"{t.get('steps')} steps, lr {t.get('lr')}, β {t.get('beta')}, SFT term on the chosen answer, "
             "utility SFT term (demo weight) on 50% benign how-to rows, benign look-alike pairs ranked helpful > "
             "refusal among the training pairs; joint image (ε "
             f"{recipe.get('image', {}).get('eps')}, {recipe.get('image', {}).get('steps')} steps) + latent "
             f"({recipe.get('latent', {}).get('eps')}× token norm, {recipe.get('latent', {}).get('steps')} steps) "
             "training threat; AT reference with the paper's α = 30. Why this recipe, with the hypotheses and "
             "the runs that failed: [results/recipe.md](results/recipe.md) (and the earlier search, "
             "[results/recipe_search.md](results/recipe_search.md)).", "",
             "## Targets on every organism instance", ""]
    after = ROOT / "docs" / "results" / "after.md"  # checks run by hand after the benchmark, kept across rewrites
    lines += [after.read_text().strip(), ""] if after.is_file() else []
    lines += report.targets_table(s) or ["No targets could be checked (the adpo arm was not run)."]
    lines += ["", "## Attack success rate, mean ± sd over instances", ""] + report.table(s, "asr")
    if report.not_converged(s):
        lines += ["", report.FOOTNOTE]
    for seed, inst in s["instances"].items():
        inst["arms"] = ordered(inst["arms"])
        q = quality(inst.get("organism"))
        lines += ["", f"## Organism seed {seed}" + (f" ({q})" if q else ""), ""]
        lines += report.table({"arms": inst["arms"]}, "asr")
        lines += ["", *report.targets_table(inst)] if inst.get("targets") else []
        lines += ["", "Gradient-masking checks:", ""] + masking({"arms": inst["arms"]})
        lines += ["", "Attacked margin log p(refusal) − log p(compliance), nats:", ""]
        lines += report.table({"arms": inst["arms"]}, "margin")
        stages = (inst.get("seconds") or {}).items()
        lines += ["", "Time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages)]
    lines += ["", "## Studies", "", "The robustness-per-compute and matched-margin studies "
              "(benchmarks/demo_studies.py) were measured on the previous recipe and are not rerun on this one "
              "(issue 20)."]
    doc = ROOT / "docs" / "results.md"
    doc.write_text("\n".join(lines) + "\n")
    return doc


def main() -> int:
    from adpo.demo.instances import instance_dir, write_summary

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--organism-seeds", default="0,1,2")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per organism instance")
    ap.add_argument("--jobs", type=int, default=2, help="organism instances run at once (one thread each on 2 cores)")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("overrides", nargs="*", help="demo overrides, e.g. 'arms=[base,dpo,adpo]'")
    args = ap.parse_args()
    seeds = [int(x) for x in args.organism_seeds.split(",")]
    command = (f"python benchmarks/results.py --out {args.out} --organism-seeds {args.organism_seeds} "
               f"--seeds {args.seeds} --jobs {args.jobs}" + "".join(f" '{o}'" for o in args.overrides))
    seconds: dict[str, float] = {}
    if not args.skip_runs:
        demo = [sys.executable, "-m", "adpo.cli", "demo", "--seeds", str(args.seeds), "--no-progress"]
        threads = str(max(1, (os.cpu_count() or 2) // args.jobs))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        def instance(seed: int) -> None:  # one process per instance, its output in a log beside OUT
            with open(args.out.parent / f"{args.out.name}-seed{seed}.log", "w") as log:
                subprocess.run([*demo, "--out", str(instance_dir(args.out, seed)), "--seed", str(seed),
                                *args.overrides], check=True, env=env, stdout=log, stderr=subprocess.STDOUT)

        with ThreadPoolExecutor(args.jobs) as pool:  # a failure stops the benchmark
            for run in [pool.submit(instance, seed) for seed in seeds]:
                run.result()
        seconds["instances"] = time.time() - t0
        (args.out / "results_seconds.json").write_text(json.dumps(seconds))
    elif (args.out / "results_seconds.json").is_file():
        seconds = json.loads((args.out / "results_seconds.json").read_text())
    write_summary(args.out, {seed: json.loads((instance_dir(args.out, seed) / "summary.json").read_text())
                             for seed in seeds}, [command])
    print(f"wrote {write_doc(args.out, seconds, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
