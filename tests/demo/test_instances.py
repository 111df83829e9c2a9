"""Organism instances as an axis (``adpo demo --organism-seeds``): one demo folder per instance, then the
mean ± sd over instances and every instance's own table. Synthetic summaries: no model runs."""

from __future__ import annotations

import json

import pytest

from adpo.cli import main
from adpo.demo.instances import instance_dir, pooled, run_instances
from adpo.demo.pipeline import arm_summary, over_seeds

from .test_report_ci import _results


def _summary(late: int, seeds: int = 1) -> dict:
    arms = {arm: over_seeds([arm_summary(_results(late)) for _ in range(seeds)]) for arm in ("dpo", "adpo")}
    return {"arms": arms, "seeds": list(range(seeds)), "machine": "m", "seconds": {"total": 1.0},
            "organism": {"utility_accuracy": 0.97, "compliance_rate_image_harm": 1.0, "refusal_rate_text_harm": 1.0},
            "config": {}}


def test_pooled_takes_the_mean_and_sd_over_instances_of_their_seed_means():
    s = pooled({0: _summary(0, seeds=2), 3: _summary(2, seeds=2)})
    sub = "pgd-image@16/255"
    assert s["organism_seeds"] == [0, 3] and set(s["instances"]) == {"0", "3"}
    assert s["arms"]["adpo"]["asr"][sub] == pytest.approx(0.25) and s["arms"]["adpo"]["asr_std"][sub] == 0
    assert s["arms"]["adpo"]["converged"][sub] is False  # one instance's ASR was not converged
    assert "asr_std_std" not in s["arms"]["adpo"]


def test_run_instances_writes_one_folder_per_instance_and_the_table(tmp_path, capsys):
    seen = []

    def run_one(seed, folder):
        seen.append((seed, folder))
        return _summary(seed % 2)

    s = run_instances(tmp_path / "out", [0, 1], run_one, ["adpo demo --out out --organism-seeds 0,1"],
                      log=lambda m: None)
    assert seen == [(0, instance_dir(tmp_path / "out", 0)), (1, instance_dir(tmp_path / "out", 1))]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["organism_seeds"] == [0, 1]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Organism seed 0 (utility_accuracy 0.970" in md and "## Organism seed 1" in md
    assert "--organism-seeds 0,1" in md and s["arms"]["adpo"]["asr"]
    assert "adpo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--organism-seeds", "0,a"], ["--organism-seeds", "1,1"],
                                  ["--organism-seeds", "0,1", "--seed", "2"]])
def test_bad_organism_seeds_are_one_line(tmp_path, capsys, argv):
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adpo: error:") and not (tmp_path / "d").exists()
