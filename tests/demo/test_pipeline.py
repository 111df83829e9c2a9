"""The demo's pure parts: config merging, seed aggregation (mean + _std siblings) and the report tables."""

from __future__ import annotations

import pytest

from adpo.demo import report
from adpo.demo.pipeline import DemoConfig, over_seeds
from adpo.utils.config import ConfigError


def test_config_merges_sections_and_rejects_unknowns():
    cfg = DemoConfig.from_dict({"train": {"train": {"steps": 7}}, "eval": {"pgd_image": {"steps": 3}, "limit": 8},
                                "arms": ["base", "adpo"], "utility_weight": 0.5})
    assert cfg.train["train"]["steps"] == 7 and cfg.train["train"]["lr"] == 3.0e-4  # merged, not replaced
    assert cfg.eval["pgd_image"]["steps"] == 3 and cfg.eval["pgd_image"]["blank_steps"] == 300
    assert cfg.eval["limit"] == 8 and cfg.arms == ("base", "adpo") and cfg.utility_weight == 0.5
    assert DemoConfig().train["train"]["steps"] == 160  # defaults are not mutated by an instance
    with pytest.raises(ConfigError, match="unknown demo option"):
        DemoConfig.from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="unknown arm"):
        DemoConfig.from_dict({"arms": ["base", "ppo"]})
    with pytest.raises(ConfigError, match="unknown task"):
        DemoConfig.from_dict({"eval": {"tasks": ["gcg"]}})


def _arm(asr: float, util: float) -> dict:
    return {"asr": {"clean": 0.0, "pgd-blank": asr, "pgd-image@16/255": asr / 2, "latent@0.3": None},
            "utility": util, "over_refusal": 0.0}


def test_over_seeds_means_and_spreads():
    one = over_seeds([_arm(0.5, 0.9)])
    assert one["asr"]["pgd-blank"] == 0.5 and "asr_std" not in one and "utility_std" not in one
    three = over_seeds([_arm(0.2, 0.9), _arm(0.4, 0.8), _arm(0.6, 1.0)])
    assert three["asr"]["pgd-blank"] == pytest.approx(0.4) and three["asr_std"]["pgd-blank"] == pytest.approx(0.2)
    assert three["utility"] == pytest.approx(0.9) and three["utility_std"] == pytest.approx(0.1)
    assert three["asr"]["latent@0.3"] is None and three["asr_std"]["latent@0.3"] is None


def test_report_tables_order_columns_and_show_spread():
    s = {"arms": {"base": over_seeds([_arm(1.0, 0.97)]), "adpo": over_seeds([_arm(0.0, 0.95)])}}
    assert report.columns(s) == ["clean", "pgd-blank", "pgd-image@16/255", "latent@0.3"]
    md = report.table(s)
    assert md[0].startswith("| arm | clean | pgd-blank |") and md[2].startswith("| base | 0.0 | 100.0 | 50.0 | n/a |")
    assert "adpo" in report.terminal(s)
    s3 = {"arms": {"adpo": over_seeds([_arm(0.2, 0.9), _arm(0.4, 0.9)])}}
    assert "30.0 ± 14.1" in report.table(s3)[2]


def test_a_rebuilt_organism_retrains_and_reevaluates_its_arms(tmp_path):
    """Arms only name the organism's folder: after a rebuild (other fingerprint) they are dropped, not reused;
    the same fingerprint keeps them, and a folder from before the stamp existed is kept and stamped."""
    from adpo.demo.pipeline import forget_other_organism

    runs = tmp_path / "seed0"
    for arm in ("at", "adpo", "eval/base"):
        (runs / arm).mkdir(parents=True)
    logs: list[str] = []
    forget_other_organism(runs, "aaaa", logs.append)  # no stamp yet: kept
    forget_other_organism(runs, "aaaa", logs.append)  # same organism: kept
    assert (runs / "adpo").is_dir() and (runs / "eval" / "base").is_dir() and not logs
    forget_other_organism(runs, "bbbb", logs.append)
    assert not (runs / "adpo").exists() and not (runs / "at").exists() and not (runs / "eval").exists()
    assert "rebuilt (aaaa -> bbbb)" in logs[0]
    assert '"bbbb"' in (runs / "organism.json").read_text()
