"""The demo's report: summary table (Markdown and terminal) and plots (ASR vs budget per arm, utility vs
ASR, training curves)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..eval.report import draw_budget_panels, save_figure
from ..threats.budget import parse_eps
from ..utils.io import atomic_text
from . import targets

NOT_CONVERGED = "†"
FOOTNOTE = (f"{NOT_CONVERGED} not converged: halving the attack budget moved this ASR by more than 2 points "
            "(with several seeds: in at least one).")


def _pct(v: Any, sd: Any = None) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _ci(ci: Any) -> str:
    """`` [31.2, 65.7]`` (Wilson 95% over behaviours; over seeds, the envelope of the seeds' intervals)."""
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _mark(a: dict, col: str) -> str:
    return NOT_CONVERGED if (a.get("converged") or {}).get(col) is False else ""


def not_converged(summary: dict) -> bool:
    """Whether any arm has a not-converged ASR (the tables then need the footnote)."""
    return any(f is False for a in summary["arms"].values() for f in (a.get("converged") or {}).values())


def columns(summary: dict) -> list[str]:
    """The harmful subtasks in report order (clean, trigger, blank, image budgets, latent budgets, figstep)."""
    first = next(iter(summary["arms"].values()))["asr"]

    def order(name: str) -> tuple:
        num = re.findall(r"[\d.]+", name.split("@")[-1])
        budget = float(num[0]) / (255 if "/255" in name else 1) if num else math.inf
        rank = ("clean", "trigger", "pgd-blank", "pgd-image", "latent", "figstep")
        return next((i for i, p in enumerate(rank) if name.startswith(p)), 9), budget
    return sorted(first, key=order)


def table(summary: dict, key: str = "asr") -> list[str]:
    """The Markdown table of one per-subtask quantity (``asr``, ``refusal``, ``other``, ``margin``); only the ASR
    table carries the intervals, the not-converged marker and the utility and over-refusal columns."""
    cols = columns(summary)
    asr = key == "asr"
    extra = " utility | over-refusal |" if asr else ""
    lines = ["| arm | " + " | ".join(cols) + " |" + extra, "|---|" + "---|" * (len(cols) + 2 * asr)]
    for arm, a in summary["arms"].items():
        sd = a.get(f"{key}_std") or {}
        if key == "margin":
            cells = [f"{a[key][c]:.1f}" if a[key][c] is not None else "n/a" for c in cols]
        elif asr:
            cells = [_pct(a[key][c], sd.get(c)) + (_ci((a.get("asr_ci") or {}).get(c)) if a[key][c] is not None
                                                   else "") + _mark(a, c) for c in cols]
        else:
            cells = [_pct(a[key][c], sd.get(c)) for c in cols]
        row = f"| {arm} | " + " | ".join(cells) + " |"
        if asr:
            row += (f" {_pct(a['utility'], a.get('utility_std'))}{_ci(a.get('utility_ci'))} | "
                    f"{_pct(a['over_refusal'], a.get('over_refusal_std'))}{_ci(a.get('over_refusal_ci'))} |")
        lines.append(row)
    return lines


def found_by(summary: dict) -> list[str]:
    """One line per (arm, subtask) whose suite has more than one attack: behaviours each found first."""
    lines = []
    for arm, a in summary["arms"].items():
        for col in columns(summary):
            counts = (a.get("found_by") or {}).get(col)
            if counts and len(counts) > 1:
                lines.append(f"- {arm}, `{col}`: " + ", ".join(f"{k} {v:g}" for k, v in counts.items()))
    return lines


def terminal(summary: dict) -> str:
    cols = columns(summary)
    short = [c.replace("pgd-image@", "img@").replace("pgd-", "") for c in cols]
    width = max(7, *(len(s) for s in short))
    head = f"{'arm':<8}" + "".join(f"{s:>{width + 1}}" for s in short) + f"{'utility':>9}{'over-ref':>9}"
    rows = [head, "-" * len(head)]
    for arm, a in summary["arms"].items():
        cells = "".join(f"{_pct(a['asr'][c]) + _mark(a, c):>{width + 1}}" for c in cols)
        rows.append(f"{arm:<8}{cells}{_pct(a['utility']):>9}{_pct(a['over_refusal']):>9}")
    if not_converged(summary):
        rows.append(FOOTNOTE)
    rows += targets.lines(summary.get("targets") or [])
    return "\n".join(rows)


def targets_table(summary: dict) -> list[str]:
    """The efficacy targets (adpo.demo.targets) as a Markdown table; empty when none could be checked."""
    got = summary.get("targets") or []
    if not got:
        return []
    met = sum(bool(t[1]) for t in got)
    return [f"Targets met: {met}/{len(got)}.", "", "| target | met | measured |", "|---|---|---|",
            *(f"| {name} | {'yes' if ok else '**no**'} | {value} |" for name, ok, value in got)]


def plots(summary: dict, out: Path, curves: dict[str, Path]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..trainer.tracking import read_metrics

    paths = {}
    cols = columns(summary)
    panels = {task: {arm: [(parse_eps(c.split("@", 1)[1]), a["asr"][c]) for c in cols if c.startswith(f"{task}@")]
                     for arm, a in summary["arms"].items()} for task in ("pgd-image", "latent")}
    plot = draw_budget_panels(panels, out / "asr_vs_budget.png")
    if plot is not None:
        paths["asr_vs_budget"] = plot

    fig, ax = plt.subplots(figsize=(5.5, 4))
    attack = "pgd-blank" if "pgd-blank" in cols else cols[-1]
    for arm, a in summary["arms"].items():
        if a["asr"][attack] is None or a["utility"] is None:
            continue
        xy = (100 * a["asr"][attack], 100 * a["utility"])
        ax.scatter(*xy, s=50)
        ax.annotate(arm, xy, textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xlabel(f"attack success under {attack} (%)")
    ax.set_ylabel("utility (exact match, %)")
    ax.set_title("utility vs robustness")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["utility_vs_asr"] = save_figure(fig, out / "utility_vs_asr.png")

    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for arm, path in curves.items():
            m = read_metrics(path)
            if not m:
                continue
            axes[0].plot([r["step"] for r in m], [r["loss"] for r in m], label=arm)
            pts = [(r["step"], r["adv/margin_attacked"]) for r in m if "adv/margin_attacked" in r]
            if pts:
                axes[1].plot(*zip(*pts), label=arm)
        axes[0].set_title("training loss")
        axes[1].set_title("margin under the training attack (nats)")
        for ax in axes:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths["training_curves"] = save_figure(fig, out / "training_curves.png")
    return paths


def write(summary: dict, out: Path, curves: dict[str, Path], commands: list[str]) -> Path:
    paths = plots(summary, out, curves)
    s = summary
    lines = ["# adpo demo: the paper's comparison on the organism", "",
             f"Machine: {s['machine']}. Seeds: {s['seeds']}. Total {s['seconds']['total']:.0f} s.", "",
             "Attack success rate (%, organism judge: the requested harmful answer was produced; averaged per "
             "behaviour, then across behaviours)" + (" — mean ± sd over seeds" if len(s["seeds"]) > 1 else "")
             + "; [low, high] = Wilson 95% interval over behaviours" + (" (the envelope of the seeds' intervals)"
                                                                       if len(s["seeds"]) > 1 else "") + ":", ""]
    lines += table(s, "asr") + (["", FOOTNOTE] if not_converged(s) else [])
    found = found_by(s)
    lines += ["", "Which attack of the suite found each success first (behaviours):", "", *found] if found else []
    lines += ["", "Refusal rate (%):", ""] + table(s, "refusal")
    lines += ["", "Degenerate (\"other\") rate (%):", ""] + table(s, "other")
    lines += ["", "Attacked margin log p(refusal) − log p(compliance) (nats, mean):", ""] + table(s, "margin")
    lines += ["", "## Targets (issue 15)", "", *targets_table(s)] if s.get("targets") else []
    lines += ["", "## Plots", ""] + [f"![{k}]({p.name})" for k, p in paths.items()]
    lines += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in s["seconds"].items()]
    lines += ["", "## Reproduce", "", "```bash", *commands, "```", "",
              "Per-arm details: `seed<k>/eval/<arm>/results.json`, `samples_*.jsonl`, `jailbreakbench/`; training runs "
              "`seed<k>/<arm>/` (config.yaml, metrics.jsonl, training_curves.png).", ""]
    atomic_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
