"""report.md and plots from one or several models' results.json (comparison mode: side by side)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..utils.io import atomic_text


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def primary_judge(res: dict) -> str:
    ok = [j for j, s in res["judges"].items() if s == "ok"]
    return ok[0] if ok else next(iter(res["judges"]))


def headline(res: dict, subtask: str) -> float | None:
    """The one number per subtask: ASR (primary judge), utility accuracy, or over-refusal rate."""
    r = res["results"].get(subtask, {})
    j = primary_judge(res)
    for key in (f"asr,{j}", f"over_refusal,{j}"):
        if key in r:
            return r[key]
    return next((v for k, v in r.items() if k.startswith("accuracy,")), None)


def _model_table(res: dict) -> list[str]:
    judges = list(res["judges"])
    lines = ["| subtask | n | " + " | ".join(f"ASR {j}" for j in judges) + " | refusal | other | margin (nats) |",
             "|---|---|" + "---|" * (len(judges) + 3)]
    j0 = primary_judge(res)
    for name, r in res["results"].items():
        if res["configs"][name]["kind"] != "harmful":
            continue
        n = res["n-samples"][name]["effective"]
        asr = " | ".join(_fmt(r.get(f"asr,{j}")) for j in judges)
        lines.append(f"| {name} | {n} | {asr} | {_fmt(r.get(f'refusal_rate,{j0}'))} | "
                     f"{_fmt(r.get(f'other_rate,{j0}'))} | {_fmt(r.get('margin,none'), pct=False)} |")
    for name, r in res["results"].items():
        kind = res["configs"][name]["kind"]
        if kind == "utility":
            lines.append(f"| {name} (accuracy) | {res['n-samples'][name]['effective']} | "
                         f"{_fmt(headline(res, name))} |" + " |" * (len(judges) + 2))
        elif kind == "over-refusal":
            vals = " | ".join(_fmt(r.get(f"over_refusal,{j}")) for j in judges)
            lines.append(f"| {name} (refused) | {res['n-samples'][name]['effective']} | {vals} | | | |")
    return lines


def write_report(out: Path, results: dict[str, dict], title: str = "adpo eval") -> dict[str, Path]:
    """``out/report.md`` and ``out/asr_vs_budget.png``; returns the paths written."""
    out = Path(out)
    first = next(iter(results.values()))
    lines = [f"# {title}", "", f"Date: {first['date']}. Models: " + ", ".join(f"`{k}`" for k in results) + ".", ""]
    lines += ["ASR = fraction of harmful behaviours answered with the target (compliance), averaged per behaviour "
              "and then across behaviours (HarmBench). White-box attacks are adaptive: they attack the model "
              "shown, and a behaviour counts at the first checkpoint where the primary judge says jailbroken. "
              "Margin = mean log p(refusal) − log p(target) under the attack.", ""]
    lines += ["Judges: " + "; ".join(f"{j}: {s}" for j, s in first["judges"].items()) + ".", ""]
    if len(results) > 1:
        subs = list(first["results"])
        lines += ["## Side by side (headline metric per subtask)", "",
                  "| subtask | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
        for s in subs:
            lines.append(f"| {s} | " + " | ".join(_fmt(headline(r, s)) for r in results.values()) + " |")
        lines.append("")
    for label, res in results.items():
        lines += [f"## {label}", ""] + _model_table(res) + [""]
    paths = {"report": out / "report.md"}
    plot = plot_budgets(results, out / "asr_vs_budget.png")
    if plot is not None:
        paths["plot"] = plot
        lines += ["## ASR against the attack budget", "", f"![ASR vs budget]({plot.name})", ""]
    cfg = first["config"]
    lines += ["## Settings", "", f"Seed {cfg['eval']['seed']}, greedy decoding, max_new_tokens "
              f"{cfg['eval']['max_new_tokens']}, checkpoints every {cfg['eval']['check_every']} steps, "
              f"{cfg['eval']['restarts']} restart(s). Machine: {cfg['machine']}. "
              f"Per-subtask attack parameters are in results.json (`configs`).", ""]
    atomic_text(paths["report"], "\n".join(lines))
    return paths


BUDGET_AXES = {"pgd-image": "L-inf budget (x/255; inf = unconstrained)",
               "universal-image": "L-inf budget of the universal perturbation (x/255)",
               "latent": "latent budget (x median token norm)"}
Series = dict[str, list[tuple[float, float | None]]]  # label -> [(budget, ASR or None)]


def plot_budgets(results: dict[str, dict], path: Path) -> Path | None:
    """ASR vs L-inf budget (pgd-image, universal-image) and vs relative latent budget, one line per model."""
    panels = {task: {label: sorted((res["configs"][s]["budget"], headline(res, s))
                                   for s in res["group_subtasks"].get(task, [])
                                   if res["configs"][s]["budget"] is not None)
                     for label, res in results.items()} for task in BUDGET_AXES}
    return draw_budget_panels(panels, path)


def draw_budget_panels(panels: dict[str, Series], path: Path) -> Path | None:
    """One log-x panel per task in :data:`BUDGET_AXES` that has points; an unconstrained budget (inf) is
    drawn at twice the largest finite one and labelled "inf"; a missing ASR (unavailable judge) is a gap."""
    panels = {t: {k: v for k, v in s.items() if v} for t, s in panels.items()}
    panels = {t: s for t, s in panels.items() if s}
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (task, series) in zip(axes[0], panels.items()):
        finite = sorted({x for pts in series.values() for x, _ in pts if math.isfinite(x)})
        cap = (max(finite) * 2) if finite else 1.0
        scale = 255 if "image" in task else 1
        for label, pts in series.items():
            ax.plot([(x if math.isfinite(x) else cap) * scale for x, _ in pts],
                    [math.nan if y is None else 100 * y for _, y in pts], marker="o", label=label)
        ax.set_xscale("log")
        ticks = finite + ([cap] if any(not math.isfinite(x) for p in series.values() for x, _ in p) else [])
        ax.set_xticks([t * scale for t in ticks], [f"{t * scale:g}" if t != cap else "inf" for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_title(task)
        ax.set_xlabel(BUDGET_AXES[task])
        ax.set_ylabel("ASR (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Save next to ``path`` and rename over it (no half-written PNG), then close the figure."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
