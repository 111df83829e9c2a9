"""Organism instances as an axis: the demo on several independently pre-trained organisms.

An organism pre-trained on another machine differs in its last bits, and a result that holds on one
instance only is not a result (issue 15). Pre-training with another seed (world + pre-training) is how
"another machine" is reproduced here: ``adpo demo --organism-seeds 0,1,2`` runs the whole demo once per
instance into ``OUT/organism-seed<S>/`` (each a complete demo folder, cached and resumable like one) and
writes ``OUT/summary.json`` and ``OUT/report.md`` with every instance's table and the mean ± sd over
instances (each instance first averaged over its training seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..utils.io import atomic_text, output_folder, write_json
from . import report
from .pipeline import over_seeds

COMMAND = "adpo demo --organism-seeds"


def instance_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"organism-seed{seed}"


def pooled(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The instances' arms as one summary: per arm, the mean (and ``*_std``) over instances."""
    first = next(iter(summaries.values()))
    arms = list(first["arms"])
    out = {k: v for k, v in first.items() if k not in ("arms", "seconds", "organism")}
    means = [{arm: {k: v for k, v in s["arms"][arm].items() if not k.endswith("_std")} for arm in arms}
             for s in summaries.values()]  # each instance's mean over its training seeds
    out["arms"] = {arm: over_seeds([m[arm] for m in means]) for arm in arms}
    out["organism_seeds"] = list(summaries)
    out["instances"] = {str(seed): {"organism": s.get("organism"), "arms": s["arms"], "targets": s.get("targets"),
                                    "seconds": s.get("seconds")} for seed, s in summaries.items()}
    out["targets"] = on_every_instance(summaries)
    return out


def on_every_instance(summaries: dict[int, dict[str, Any]]) -> list[list]:
    """Each target as [name, met on every instance, the instances' numbers]; a target counts only where every
    instance could check it."""
    per = {seed: {t[0]: t for t in s.get("targets") or []} for seed, s in summaries.items()}
    names = [n for n in next(iter(per.values()), {}) if all(n in p for p in per.values())]
    return [[n, all(p[n][1] for p in per.values()), "; ".join(f"seed {seed}: {p[n][2]}" for seed, p in per.items())]
            for n in names]


def run_instances(out: Path, seeds: list[int], run_one: Callable[[int, Path], dict[str, Any]],
                  commands: list[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """``run_one(seed, folder)`` (one whole demo) for every organism seed, then the instances' report."""
    out = Path(out)
    with output_folder(out, COMMAND) as folder:
        folder.begin()
        summaries = {}
        for i, seed in enumerate(seeds, 1):
            log(f"organism instance {i}/{len(seeds)}: seed {seed} -> {instance_dir(out, seed)}")
            summaries[seed] = run_one(seed, instance_dir(out, seed))
        summary = write_summary(out, summaries, commands)
        print("\n" + report.terminal(summary) + "\n")
        return summary


def write_summary(out: Path, summaries: dict[int, dict[str, Any]], commands: list[str]) -> dict[str, Any]:
    """The instances' summary, written as ``out/summary.json`` and ``out/report.md``; returns it."""
    summary = pooled(summaries)
    write_json(Path(out) / "summary.json", summary)
    atomic_text(Path(out) / "report.md", "\n".join(markdown(summary, commands)) + "\n")
    return summary


def quality(organism: dict[str, Any] | None) -> str:
    """An organism's own quality metrics, for a heading: ``utility_accuracy 0.965, ...`` ('' when unknown)."""
    org = organism or {}
    return ", ".join(f"{k} {org[k]:.3f}" for k in ("utility_accuracy", "compliance_rate_image_harm",
                                                    "refusal_rate_text_harm") if org.get(k) is not None)


def markdown(summary: dict[str, Any], commands: list[str]) -> list[str]:
    """Mean ± sd over organism instances, then each instance's own table, each with its organism's quality."""
    seeds = summary["organism_seeds"]
    lines = [f"# adpo demo on {len(seeds)} organism instances (seeds {seeds})", "",
             "Each instance is pre-trained from its own seed (world + pre-training): what another machine's "
             "last bits do to the organism. Regenerate: " + "; ".join(f"`{c}`" for c in commands) + ".", "",
             "## ASR over instances (mean ± sd of the instances' means)", ""]
    lines += report.table(summary, "asr")
    if report.not_converged(summary):
        lines += ["", report.FOOTNOTE]
    if summary.get("targets"):
        lines += ["", "## Targets on every instance (issue 15)", "", *report.targets_table(summary)]
    for seed, inst in summary["instances"].items():
        q = quality(inst.get("organism"))
        lines += ["", f"## Organism seed {seed}" + (f" ({q})" if q else ""), "",
                  f"Folder `organism-seed{seed}/` (its own report.md has the details).", ""]
        lines += report.table({"arms": inst["arms"]}, "asr")
        if inst.get("targets"):
            lines += ["", *report.targets_table(inst)]
    return lines
