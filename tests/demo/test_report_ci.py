"""The demo's summary carries each ASR's interval, convergence and suite attribution (issue 13), its tables
mark the not-converged cells, and only the ASR table has the utility and over-refusal columns (issue 15).
Synthetic results.json built from record dicts: no model runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adpo.demo import report
from adpo.demo.pipeline import arm_summary, over_seeds
from adpo.eval.results import results_json, wilson


def _rec(beh: str, broken: bool, step: int | None, name: str) -> dict:
    return {"subtask": name, "doc_id": beh, "behavior_id": beh, "margin": 2.0, "success_step": step, "restart": 0,
            "attack": {"name": name, "params": {"steps": 100, "restarts": 1}},
            "judges": {"organism": {"label": "jailbroken" if broken else "refused", "raw": None}}}


def _results(late: int) -> dict:
    """32 behaviours per subtask: pgd-image@16/255 has 8 successes, ``late`` of them after half the steps."""
    records = {
        "clean": [{**_rec(f"b{i}", False, None, "clean"), "attack": {"name": "clean", "params": {}}}
                  for i in range(32)],
        "pgd-image@16/255": [_rec(f"b{i}", i < 8, (90 if i < late else 10) if i < 8 else None, "pgd-image@16/255")
                             for i in range(32)],
        "utility": [{"doc_id": i, "score": float(i < 30)} for i in range(32)],
        "over-refusal": [{"doc_id": i, "behavior_id": f"o{i}", "judges": {
            "organism": {"label": "refused" if i < 2 else "complied"}}} for i in range(32)]}
    subs = [SimpleNamespace(name=n, task=n.split("@")[0], kind=n if n in ("utility", "over-refusal") else "harmful",
                            attack_type="white_box", params={}, budget=None, rows=[]) for n in records]
    return results_json("arm", subs, records, {"organism": "ok"}, {}, 1.0, {})


def test_arm_summary_carries_interval_convergence_and_attribution():
    a = arm_summary(_results(late=2))
    sub = "pgd-image@16/255"
    assert a["asr"][sub] == 0.25 and a["asr_ci"][sub] == pytest.approx(list(wilson(0.25, 32)))
    assert a["asr_half"][sub] == pytest.approx(6 / 32) and a["converged"][sub] is False
    assert a["converged"]["clean"] is True and a["found_by"][sub] == {sub: 8}
    assert a["utility"] == pytest.approx(30 / 32) and a["utility_ci"] == pytest.approx(list(wilson(30 / 32, 32)))
    assert a["over_refusal"] == pytest.approx(2 / 32)
    assert a["over_refusal_ci"] == pytest.approx(list(wilson(2 / 32, 32)))
    # an old results.json without the new keys: the fields are null, nothing raises
    old = _results(late=0)
    for r in old["results"].values():
        for k in [k for k in r if "_ci_" in k or k.split(",")[0] in ("converged", "found_by", "asr_half")]:
            del r[k]
    b = arm_summary(old)
    assert b["asr_ci"][sub] is None and b["converged"][sub] is None and b["utility_ci"] is None
    assert report.table({"arms": {"old": over_seeds([b])}})[2].startswith("| old | 0.0 | 25.0 | 93.8 | 6.2 |")


def test_over_seeds_envelopes_intervals_and_any_seed_unconverged():
    s0, s1 = arm_summary(_results(late=0)), arm_summary(_results(late=2))
    s1["asr_ci"]["clean"] = None  # a seed whose judge was unavailable
    both = over_seeds([s0, s1])
    sub = "pgd-image@16/255"
    assert both["converged"] == {"clean": True, sub: False}  # false in one seed -> false
    assert both["asr_ci"][sub] == s0["asr_ci"][sub] and both["asr_ci"]["clean"] == s0["asr_ci"]["clean"]
    assert both["utility_ci"] == s0["utility_ci"] and "asr_ci_std" not in both and "converged_std" not in both
    assert both["found_by"][sub] == {sub: 8} and both["asr"][sub] == 0.25 and both["asr_std"][sub] == 0.0
    s1["asr_ci"][sub] = [0.2, 0.6]  # lowest low from seed 0, highest high from seed 1
    assert over_seeds([s0, s1])["asr_ci"][sub] == [pytest.approx(wilson(0.25, 32)[0]), 0.6]
    assert over_seeds([s0, {**s1, "converged": {"clean": None, sub: True}}])["converged"] == {"clean": None,
                                                                                             sub: True}


def test_tables_mark_not_converged_cells_and_keep_rate_columns_to_the_asr_table():
    s = {"arms": {"dpo": over_seeds([arm_summary(_results(late=0))]),
                  "adpo": over_seeds([arm_summary(_results(late=2))])}, "seeds": [0]}
    asr = report.table(s, "asr")
    assert asr[0] == "| arm | clean | pgd-image@16/255 | utility | over-refusal |"
    assert asr[1] == "|---|---|---|---|---|"
    assert asr[2] == "| dpo | 0.0 [0.0, 10.7] | 25.0 [13.3, 42.1] | 93.8 [79.9, 98.3] | 6.2 [1.7, 20.1] |"
    assert asr[3].split(" | ")[2] == "25.0 [13.3, 42.1]" + report.NOT_CONVERGED
    assert sum(line.count(report.NOT_CONVERGED) for line in asr) == 1
    for key in ("refusal", "other", "margin"):
        t = report.table(s, key)
        assert t[0] == "| arm | clean | pgd-image@16/255 |" and t[1] == "|---|---|---|", key
        assert all(line.count("|") == 4 for line in t) and report.NOT_CONVERGED not in "".join(t), key
    term = report.terminal(s).splitlines()
    assert term[0].split() == ["arm", "clean", "img@16/255", "utility", "over-ref"]
    assert term[2].split() == ["dpo", "0.0", "25.0", "93.8", "6.2"]
    assert term[3].split() == ["adpo", "0.0", "25.0" + report.NOT_CONVERGED, "93.8", "6.2"]
    assert term[-1] == report.FOOTNOTE
    assert report.FOOTNOTE not in report.terminal({"arms": {"dpo": s["arms"]["dpo"]}})
    # several seeds: mean ± sd, then the envelope of the seeds' intervals
    s3 = {"arms": {"adpo": over_seeds([arm_summary(_results(late=2)), arm_summary(_results(late=0))])}}
    assert report.table(s3)[2].split(" | ")[2] == "25.0 ± 0.0 [13.3, 42.1]" + report.NOT_CONVERGED


def test_found_by_lines_only_for_multi_attack_suites():
    a = arm_summary(_results(late=0))
    assert report.found_by({"arms": {"x": a}}) == []
    a["found_by"]["pgd-image@16/255"] = {"apgd": 6, "square": 2}
    assert report.found_by({"arms": {"x": a}}) == ["- x, `pgd-image@16/255`: apgd 6, square 2"]
