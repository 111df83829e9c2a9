"""Metrics: one JSON line per logged step (TRL's names), accelerate's trackers, a plot at the end.

``train.report_to`` names accelerate trackers (``log_with`` / ``init_trackers`` / ``log``): tensorboard
(event files in ``OUT/runs/adpo``), wandb (its run folder in ``OUT/wandb``; ``WANDB_MODE=offline`` works
without the network), mlflow (the store ``MLFLOW_TRACKING_URI`` names, else mlflow's default, ``mlflow.db`` in
the working directory; the run is named after ``OUT``), trackio, ``all`` (those installed) or a comma list. Each
is an optional extra (``pip install 'adpo[wandb]'``); one that is named but not installed is refused before
anything is written (accelerate itself would drop it silently).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..utils.io import atomic_text

PROJECT = "adpo"  # accelerate's project name: the tensorboard folder OUT/runs/adpo, the wandb project


def log_with(report_to: str) -> list[str]:
    """``train.report_to`` as accelerate's ``log_with``: named trackers must be installed, ``all`` takes the
    installed, usable ones (as TRL's ``report_to="all"``)."""
    from accelerate.utils import imports

    from ..utils.config import ConfigError
    from .config import TRACKERS, trackers

    unusable = {n: f"the {n} package is not installed" for n in TRACKERS
                if not getattr(imports, f"is_{n}_available")()}
    if "mlflow" not in unusable and not _mlflow_store_usable():
        unusable["mlflow"] = "mlflow's default store (sqlite) needs sqlalchemy and alembic"
    if str(report_to).strip() == "all":
        return [n for n in TRACKERS if n not in unusable]
    names = trackers(report_to)
    for n in names:
        if n in unusable:
            raise ConfigError(f"train.report_to={report_to}: {unusable[n]}; pip install 'adpo[{n}]' "
                              "(or drop it from train.report_to)")
    return names


def _mlflow_store_usable() -> bool:
    """mlflow >= 3 defaults to a sqlite store (``sqlite:///mlflow.db``), which mlflow-skinny alone cannot open
    (it needs sqlalchemy and alembic, both in the ``mlflow`` extra); without them the run would fail only after
    its folder is made."""
    import importlib.util

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not uri.startswith("sqlite:"):
        return True
    return all(importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "alembic"))


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 2e-05, …}`` of the scalar types every tracker takes."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def start_trackers(acc, run_config: dict[str, Any], out: Path) -> None:
    """``init_trackers`` with the run's flattened config (the wandb run folder inside ``out``)."""
    if acc.log_with:
        acc.init_trackers(PROJECT, config=flat_config(run_config),
                          init_kwargs={"wandb": {"dir": str(out), "name": out.name},
                                       "mlflow": {"run_name": out.name},
                                       "trackio": {"name": out.name}})


class MetricsLog:
    """Appends to ``path`` (and to accelerate's trackers through ``acc``); ``truncate(step)`` drops lines after a
    resumed checkpoint (atomically)."""

    def __init__(self, path: Path, acc: Any = None):
        self.path = Path(path)
        self.acc = acc if acc is not None and acc.log_with else None

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):  # a line half-written by the killed run
                continue
        atomic_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
        if self.acc is not None:
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.acc is not None:  # not acc.end_training(): that also ends the process group
            for tracker in self.acc.trackers:
                tracker.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out_png: Path, title: str = "") -> Path | None:
    """Loss and the clean / attacked margins against the step, in one PNG (written atomically)."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", ["loss"]),
              ("policy margin log p(chosen) - log p(rejected)", ["adv/margin_clean", "adv/margin_attacked"]),
              ("cross-entropy", ["sft/chosen_ce", "adv/chosen_ce_attacked", "sft/utility_ce"])]
    panels = [(t, [k for k in keys if any(k in r for r in rows)]) for t, keys in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=out_png.parent, prefix=f".{out_png.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
