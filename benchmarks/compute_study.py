"""Robustness per compute (issue 20): which cheaper adversary reaches the K = 10 robustness for less?

For every organism instance (``--organism-seeds``: pre-trained from that seed, cached; or ``--organism``
folders already pre-trained), one AT reference with the demo's recipe, then ADPO from it for every
variant × K of the training adversary (``adpo.trainer.adversary``, docs/training.md "Cheaper adversaries"):

* ``plain``      K image + latent steps of the recipe's joint threat, step max(eps/4, 2.5 eps/K) (the
                 earlier study's schedule, benchmarks/demo_studies.py);
* ``persistent`` the same with persistent per-pair perturbations (warm starts across steps and epochs);
* ``early-stop`` the same with per-sample early stop at ``--stop-below`` nats of the rejected answer's NLL;
* ``free``       free adversarial training with K replays of each batch (no attack passes; the same number
                 of optimizer steps, so 1/K of the batches).

Each arm is evaluated with the demo's attack suite (``adpo demo``'s eval section; ``eval.*`` overrides
shrink it for a smoke run) and its ASR per attack is set against its training seconds and its
input-gradient passes (``adv/passes`` of metrics.jsonl, else steps × K). Writes ``OUT/compute.json``,
``OUT/compute.png`` (ASR against training seconds and against passes, one panel per attack) and prints
the cheapest setting whose ASR is within ``--tolerance`` (2 points) of plain K = 10 on every attack and
every organism instance, and whether it costs at most half of K = 10's training time.

Usage (the full study takes hours on 2 cores; a smoke run, minutes)::

    python benchmarks/compute_study.py --out runs/compute --organism-seeds 0,1,2
    python benchmarks/compute_study.py --out /tmp/smoke --organism runs/organism --ks 1,2 --variants plain,free \\
        train.train.steps=4 eval.limit=4 eval.tasks=[clean,pgd-image] eval.pgd_image.steps=5 \\
        eval.pgd_image.blank=false eval.suite=standard
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from adpo.demo.pipeline import DemoConfig, arm_summary, prepare_data, recipe_for, train_arm
from adpo.eval.config import EvalConfig
from adpo.eval.runner import ModelSpec, evaluate_model
from adpo.eval.tasks import Data, organism_defaults
from adpo.trainer.tracking import read_metrics
from adpo.utils.config import apply_overrides
from adpo.utils.io import ensure_writable_dir, write_json

VARIANTS = ("plain", "persistent", "early-stop", "free")


def setting(variant: str, k: int, recipe: dict, stop_below: float) -> dict:
    """The ADPO recipe of one variant × K (its train, image and latent sections changed)."""
    recipe = copy.deepcopy(recipe)
    eps = recipe["image"]["eps"]
    step = {"steps": k, "random_start": True, "step_size": max(eps / 4, 2.5 * eps / k)}
    recipe["image"].update(step)
    recipe["latent"]["steps"] = k
    train = recipe["train"]
    if variant == "persistent":
        train["persistent_perturbations"] = True
    elif variant == "early-stop":
        train["attack_stop_below"] = stop_below
    elif variant == "free":
        train["free_replays"] = k
    elif variant != "plain":
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return recipe


def passes_of(folder: Path, variant: str, k: int, steps: int) -> float:
    """Input-gradient passes the training attack spent (batch units): logged with the cheaper options."""
    logged = [r["adv/passes"] for r in read_metrics(folder / "metrics.jsonl") if "adv/passes" in r]
    return float(sum(logged)) if logged else float(steps * k)


def organisms(args, out: Path) -> list[tuple[str, Path]]:
    """(label, organism folder) per instance: pre-trained from each seed (cached), or the given folders."""
    if args.organism:
        return [(Path(p).name, Path(p)) for p in args.organism]
    from adpo.organism.pretrain import PretrainConfig, pretrain
    from adpo.organism.world import WorldConfig

    found = []
    for seed in (int(s) for s in args.organism_seeds.split(",")):
        folder = out / f"organism-seed{seed}" / "organism"
        pretrain(folder, WorldConfig.from_dict({"seed": seed}), None, PretrainConfig(seed=seed), progress=False)
        found.append((f"seed{seed}", folder))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--organism-seeds", default="0,1,2", help="organism instances, pre-trained from these seeds")
    ap.add_argument("--organism", action="append", help="an already pre-trained organism folder (repeatable; "
                                                        "replaces --organism-seeds)")
    ap.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    ap.add_argument("--ks", default="1,3,10", help="training attack steps K (10 is the reference)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--stop-below", type=float, default=2.0, help="early-stop: rejected-answer NLL in nats")
    ap.add_argument("--tolerance", type=float, default=0.02, help="ASR points (as a fraction) allowed above K=10")
    ap.add_argument("overrides", nargs="*", help="demo config overrides: train.train.steps=4 eval.limit=4 ...")
    args = ap.parse_args()
    out = ensure_writable_dir(args.out)
    cfg = DemoConfig.from_dict(apply_overrides({}, args.overrides))
    ks = [int(k) for k in args.ks.split(",")]
    reference_k = max(ks)
    variants = args.variants.split(",")
    rows = []
    for label, organism in organisms(args, out):
        inst = out / label
        data = prepare_data(inst, organism / "model", cfg)
        ecfg = EvalConfig.from_dict({**cfg.eval, "seed": args.seed})
        edata = Data(ecfg, organism_defaults(organism / "model", inst))
        at = inst / "at"
        train_arm("at", organism / "model", data, at, recipe_for("at", cfg), args.seed, progress=False)
        for variant in variants:
            for k in ks:
                recipe = setting(variant, k, recipe_for("adpo", cfg), args.stop_below)
                folder = inst / f"{variant}-K{k}"
                seconds, _ = train_arm("adpo", organism / "model", data, folder, recipe, args.seed, at,
                                       progress=False)
                t0 = time.time()
                res = evaluate_model(ModelSpec(f"{variant} K={k}", str(organism / "model"), str(folder)), ecfg,
                                     folder / "eval", data=edata, progress=False, log=lambda s: None)
                summary = arm_summary(res)
                row = {"organism": label, "variant": variant, "K": k, "train_seconds": round(seconds, 2),
                       "passes": passes_of(folder, variant, k, recipe["train"]["steps"]),
                       "eval_seconds": round(time.time() - t0, 1), "asr": summary["asr"],
                       "utility": summary["utility"], "over_refusal": summary["over_refusal"]}
                print(json.dumps(row), flush=True)
                rows.append(row)
    verdict = cheapest(rows, reference_k, args.tolerance)
    write_json(out / "compute.json", {"rows": rows, "verdict": verdict, "seed": args.seed, "ks": ks,
                                      "variants": variants, "stop_below": args.stop_below,
                                      "eval": ecfg.to_dict(), "train": cfg.train})
    plot(rows, out / "compute.png")
    print(json.dumps(verdict), flush=True)
    print(json.dumps({"wrote": [str(out / "compute.json"), str(out / "compute.png")]}))
    return 0


def cheapest(rows: list[dict], reference_k: int, tolerance: float) -> dict:
    """The cheapest (mean training seconds over instances) setting within ``tolerance`` of plain K =
    ``reference_k`` on every attack of every instance; with its share of the reference's time."""
    ref = {r["organism"]: r for r in rows if r["variant"] == "plain" and r["K"] == reference_k}
    if not ref:
        return {"cheapest": None, "why": f"no plain K={reference_k} reference among the runs"}
    settings: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        settings.setdefault((r["variant"], r["K"]), []).append(r)
    ref_seconds = statistics.mean(r["train_seconds"] for r in ref.values())
    ref_passes = statistics.mean(r["passes"] for r in ref.values())
    ok = []
    for (variant, k), runs in settings.items():
        if {r["organism"] for r in runs} != set(ref):
            continue
        worst = max((r["asr"][a] or 0) - (ref[r["organism"]]["asr"][a] or 0) for r in runs for a in r["asr"])
        if worst <= tolerance + 1e-9:
            ok.append((statistics.mean(r["train_seconds"] for r in runs), variant, k, worst,
                       statistics.mean(r["passes"] for r in runs)))
    seconds, variant, k, worst, passes = min(ok)
    return {"cheapest": f"{variant} K={k}", "mean_train_seconds": round(seconds, 2),
            "share_of_reference_time": round(seconds / ref_seconds, 3), "worst_asr_excess": round(worst, 4),
            "share_of_reference_passes": round(passes / ref_passes, 3) if ref_passes else None,
            "reference": f"plain K={reference_k}", "reference_seconds": round(ref_seconds, 2),
            "within_half": seconds <= 0.5 * ref_seconds, "tolerance": tolerance,
            "qualifying": [f"{v} K={kk}" for _, v, kk, _, _ in sorted(ok)]}


def plot(rows: list[dict], path: Path) -> None:
    """ASR (mean over instances) against training seconds (top) and attack passes (bottom), per attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted(rows[0]["asr"])
    fig, axes = plt.subplots(2, len(attacks), figsize=(4.4 * len(attacks), 7.2), squeeze=False)
    for col, attack in enumerate(attacks):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            pts: dict[int, list[dict]] = {}
            for r in rows:
                if r["variant"] == variant:
                    pts.setdefault(r["K"], []).append(r)
            ks = sorted(pts)
            asr = [100 * statistics.mean(r["asr"][attack] or 0 for r in pts[k]) for k in ks]
            for row, key in enumerate(("train_seconds", "passes")):
                x = [statistics.mean(r[key] for r in pts[k]) for k in ks]
                ax = axes[row][col]
                ax.plot(x, asr, marker="o", label=variant)
                for xi, yi, k in zip(x, asr, ks):
                    ax.annotate(f"K={k}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for row, label in enumerate(("ADPO training seconds", "attack input-gradient passes (batches)")):
            ax = axes[row][col]
            ax.set_xlabel(label)
            ax.set_ylabel(f"ASR {attack} (%)")
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
