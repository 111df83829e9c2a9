"""report.md and plots from one or several models' results.json (comparison mode: side by side)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..utils.io import atomic_text
from .results import primary_judge

NOT_CONVERGED = "†"
FOOTNOTE = (f"{NOT_CONVERGED} not converged: halving the attack budget moved this ASR by more than 2 points "
            "(results.json `converged,none` is false).")


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def _with_ci(r: dict, metric: str, judge: str, mark: bool = False) -> str:
    """``48.3% [31.2, 65.7]`` (Wilson 95% over behaviours), ``†`` appended when ``mark`` and not converged."""
    v = r.get(f"{metric},{judge}")
    lo, hi = r.get(f"{metric}_ci_low,{judge}"), r.get(f"{metric}_ci_high,{judge}")
    cell = _fmt(v) + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if v is not None and lo is not None and hi is not None
                      else "")
    return cell + (NOT_CONVERGED if mark and r.get("converged,none") is False else "")


def headline(res: dict, subtask: str) -> float | None:
    """The one number per subtask: ASR (primary judge), utility accuracy, or over-refusal rate."""
    r = res["results"].get(subtask, {})
    j = primary_judge(res)
    for key in (f"asr,{j}", f"over_refusal,{j}"):
        if key in r:
            return r[key]
    return next((v for k, v in r.items() if k.startswith("accuracy,")), None)


def headline_cell(res: dict, subtask: str) -> str:
    """:func:`headline` with its interval and, for an ASR, the not-converged marker."""
    r = res["results"].get(subtask, {})
    j = primary_judge(res)
    for metric in ("asr", "over_refusal"):
        if f"{metric},{j}" in r:
            return _with_ci(r, metric, j, mark=metric == "asr")
    scorer = next((k.split(",", 1)[1] for k in r if k.startswith("accuracy,")), None)
    return "n/a" if scorer is None else _with_ci(r, "accuracy", scorer)


def _model_table(res: dict) -> list[str]:
    judges = list(res["judges"])
    lines = ["| subtask | n | " + " | ".join(f"ASR {j}" for j in judges) + " | refusal | other | margin (nats) |",
             "|---|---|" + "---|" * (len(judges) + 3)]
    j0 = primary_judge(res)
    for name, r in res["results"].items():
        if res["configs"][name]["kind"] != "harmful":
            continue
        n = res["n-samples"][name]["effective"]
        asr = " | ".join(_with_ci(r, "asr", j, mark=j == j0) for j in judges)
        lines.append(f"| {name} | {n} | {asr} | {_fmt(r.get(f'refusal_rate,{j0}'))} | "
                     f"{_fmt(r.get(f'other_rate,{j0}'))} | {_fmt(r.get('margin,none'), pct=False)} |")
    for name, r in res["results"].items():
        kind = res["configs"][name]["kind"]
        if kind == "utility":
            lines.append(f"| {name} (accuracy) | {res['n-samples'][name]['effective']} | "
                         f"{headline_cell(res, name)} |" + " |" * (len(judges) + 2))
        elif kind == "over-refusal":
            vals = " | ".join(_with_ci(r, "over_refusal", j) for j in judges)
            lines.append(f"| {name} (refused) | {res['n-samples'][name]['effective']} | {vals} | | | |")
    return lines


def found_by_lines(res: dict) -> list[str]:
    """One line per harmful subtask whose suite has more than one attack: the behaviours each attack found
    first and the union ASR after each attack in order (AutoAttack's table)."""
    lines = []
    for name, r in res["results"].items():
        after = r.get("asr_after,none") or []
        if res["configs"][name]["kind"] != "harmful" or len(after) < 2:
            continue
        found = r.get("found_by,none") or {}
        suite = (res["configs"][name].get("params") or {}).get("suite")
        steps = " → ".join(f"{e['attack']} {_fmt(e['asr'])}" for e in after)
        counts = ", ".join(f"{a} {c:.3g}" for a, c in found.items())
        lines.append(f"- `{name}`" + (f" (suite `{suite}`)" if suite else "") + f": found first by {counts}; "
                     f"union ASR after each attack: {steps}.")
    return lines


GRADIENT_FREE = "random-search"  # the suite's gradient-masking check (adpo.eval.suites)


def is_masking_check(attack: str) -> bool:
    """Whether a ``found_by`` name is a check that does not use the evaluated model's gradient (the random
    search, a transfer attack): a success of one of them means the white-box attacks missed it."""
    return attack == GRADIENT_FREE or attack.startswith("transfer:")


def masking_lines(res: dict) -> list[str]:
    """Where a check beat the white-box attacks on the model itself (a sign of gradient masking, Athalye et
    al. 2018): the suite's gradient-free random search, or a transfer attack (a perturbation found on another
    model), jailbroke behaviours every white-box attack missed, or the painted trigger (black-box, no
    search) jailbroke more behaviours than the unconstrained white-box attack."""
    lines = []
    for name, r in res["results"].items():
        for check, found in (r.get("found_by,none") or {}).items():
            if found and is_masking_check(check):
                what = "the gradient-free random search" if check == GRADIENT_FREE else f"`{check}`"
                lines.append(f"- `{name}`: {what} jailbroke {found:g} behaviour(s) that every white-box attack "
                             "of the suite missed.")
    asr = {n: r.get(f"asr,{primary_judge(res)}") for n, r in res["results"].items()}
    if asr.get("trigger") is not None and asr.get("pgd-blank") is not None and asr["trigger"] > asr["pgd-blank"]:
        lines.append(f"- `trigger` ({_fmt(asr['trigger'])}) beats the unconstrained white-box `pgd-blank` "
                     f"({_fmt(asr['pgd-blank'])}).")
    return lines


def _marked(res: dict) -> bool:
    return any(r.get("converged,none") is False for r in res["results"].values())


def write_report(out: Path, results: dict[str, dict], title: str = "adpo eval") -> dict[str, Path]:
    """``out/report.md`` and ``out/asr_vs_budget.png``; returns the paths written."""
    out = Path(out)
    first = next(iter(results.values()))
    lines = [f"# {title}", "", f"Date: {first['date']}. Models: " + ", ".join(f"`{k}`" for k in results) + ".", ""]
    lines += ["ASR = fraction of harmful behaviours answered with the target (compliance), averaged per behaviour "
              "and then across behaviours (HarmBench). White-box attacks are adaptive: they attack the model "
              "shown, and a behaviour counts at the first checkpoint where the primary judge says jailbroken. "
              "[low, high] = Wilson 95% interval over behaviours. "
              "Margin = mean log p(refusal) − log p(target) under the attack.", ""]
    lines += ["Judges: " + "; ".join(f"{j}: {s}" for j, s in first["judges"].items()) + ".", ""]
    if len(results) > 1:
        subs = list(first["results"])
        lines += ["## Side by side (headline metric per subtask)", "",
                  "| subtask | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
        for s in subs:
            lines.append(f"| {s} | " + " | ".join(headline_cell(r, s) for r in results.values()) + " |")
        lines += [""] + ([FOOTNOTE, ""] if any(_marked(r) for r in results.values()) else [])
    for label, res in results.items():
        lines += [f"## {label}", ""] + _model_table(res) + [""]
        lines += [FOOTNOTE, ""] if _marked(res) else []
        found = found_by_lines(res)
        lines += ["Which attack of the suite found each success first:", "", *found, ""] if found else []
        masking = masking_lines(res)
        lines += ["**Gradient-masking check failed** (the white-box numbers above under-report):", "", *masking,
                  ""] if masking else []
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
