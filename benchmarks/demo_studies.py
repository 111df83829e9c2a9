"""Two studies on top of the demo's recipe (prints JSON lines; writes OUT/<study>.json and a plot).

* ``compute``: robustness per compute. ADPO from the same AT reference with K in {1, 3, 10} attack steps
  (random start, step max(eps/4, 2.5 eps/K)), a one-step FGSM variant without random start (step = eps),
  and the random-start one-step variant (step 1.25 eps, Wong et al.); attacked ASR against training time.
* ``margin``: the ablation at matched clean margin. dpo, ar-dpo, at-dpo and adpo trained for several step
  counts; attacked ASR against the clean margin log p(refusal) - log p(compliance), so that arms are
  compared at the same depth rather than the same step count (docs/organism.md, "Design history").

Usage: python benchmarks/demo_studies.py --study compute|margin --out runs/studies [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from adpo.demo.pipeline import DemoConfig, arm_summary, prepare_data, recipe_for, train_arm
from adpo.eval.config import EvalConfig
from adpo.eval.runner import ModelSpec, evaluate_model
from adpo.eval.tasks import Data, organism_defaults
from adpo.organism.pretrain import pretrain
from adpo.utils.io import ensure_writable_dir, write_json

ATTACKS = {"tasks": ["clean", "pgd-image", "latent"]}


def variants(recipe: dict) -> list[tuple[str, dict]]:
    eps = recipe["image"]["eps"]
    out = [("fgsm (K=1, no random start)", {"steps": 1, "random_start": False, "step_size": eps}),
           ("fgsm-rs (K=1, random start)", {"steps": 1, "random_start": True, "step_size": 1.25 * eps})]
    out += [(f"K={k}", {"steps": k, "random_start": True, "step_size": max(eps / 4, 2.5 * eps / k)})
            for k in (1, 3, 10)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", choices=("compute", "margin"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="10,20,40", help="margin study: training step counts")
    args = ap.parse_args()
    out = ensure_writable_dir(args.out)
    cfg = DemoConfig()
    pretrain(out / "organism", progress=False)
    organism = out / "organism" / "model"
    data = prepare_data(out, organism, cfg)
    ecfg = EvalConfig.from_dict({**cfg.eval, **ATTACKS, "seed": args.seed})
    edata = Data(ecfg, organism_defaults(organism, out))
    at = out / f"seed{args.seed}" / "at"
    at_seconds, _ = train_arm("at", organism, data, at, recipe_for("at", cfg), args.seed, progress=False)

    def run(name: str, method: str, recipe: dict, folder: Path) -> dict:
        seconds, _ = train_arm(method, organism, data, folder, recipe, args.seed,
                            at if method in ("ar-dpo", "adpo") else None, progress=False)
        t0 = time.time()
        res = evaluate_model(ModelSpec(name, str(organism), str(folder)), ecfg, folder / "eval", data=edata,
                             progress=False, log=lambda s: None)
        row = {"name": name, "method": method, "train_seconds": round(seconds, 2),
               "eval_seconds": round(time.time() - t0, 1), **arm_summary(res)}
        print(json.dumps(row), flush=True)
        return row

    rows = []
    if args.study == "compute":
        for name, image in variants(cfg.train):
            recipe = copy.deepcopy(recipe_for("adpo", cfg))
            recipe["image"].update(image)
            recipe["latent"]["steps"] = image["steps"]
            recipe["latent"]["random_start"] = image["random_start"]
            rows.append({**run(name, "adpo", recipe, out / "compute" / name.split(" ")[0]), "K": image["steps"],
                         "random_start": image["random_start"]})
    else:
        for steps in (int(s) for s in args.steps.split(",")):
            for method in ("dpo", "ar-dpo", "at-dpo", "adpo"):
                recipe = copy.deepcopy(recipe_for(method, cfg))
                recipe["train"]["steps"] = steps
                rows.append({**run(f"{method}@{steps}", method, recipe, out / "margin" / f"{method}-{steps}"),
                             "steps": steps})
    write_json(out / f"{args.study}.json", {"rows": rows, "at_seconds": at_seconds, "seed": args.seed,
                                            "eval": ecfg.to_dict()})
    plot(args.study, rows, out / f"{args.study}.png")
    print(json.dumps({"wrote": [str(out / f"{args.study}.json"), str(out / f"{args.study}.png")]}))
    return 0


def plot(study: str, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ("pgd-blank", "pgd-image@32/255", "latent@0.5") if a in rows[0]["asr"]]
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 3.8), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        if study == "compute":
            for r in rows:
                ax.scatter(r["train_seconds"], 100 * r["asr"][attack], s=40)
                ax.annotate(r["name"].split(" ")[0], (r["train_seconds"], 100 * r["asr"][attack]), fontsize=8,
                            textcoords="offset points", xytext=(4, 4))
            ax.set_xlabel("ADPO training time (s)")
        else:
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = sorted((r["margin"]["clean"], 100 * r["asr"][attack]) for r in rows if r["method"] == method)
                ax.plot(*zip(*pts), marker="o", label=method)
            ax.set_xlabel("clean margin log p(refusal) - log p(compliance) (nats)")
            ax.legend(fontsize=8)
        ax.set_ylabel(f"ASR under {attack} (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
