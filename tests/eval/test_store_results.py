"""Sample store (resume, truncated lines) and the aggregation into results.json."""

from __future__ import annotations

import pytest

from adpo.eval.results import metrics, validate
from adpo.eval.store import SampleStore


def _rec(doc, beh, label, sub="s", chash="h", margin=1.0):
    return {"subtask": sub, "doc_id": doc, "config_hash": chash, "behavior_id": beh, "margin": margin,
            "judges": {"j": {"label": label, "raw": None}}}


def test_store_resumes_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "samples_x.jsonl"
    s = SampleStore(path)
    s.append([_rec(0, "a", "refused"), _rec(1, "a", "jailbroken")])
    with open(path, "a") as f:
        f.write('{"subtask": "s", "doc_id": 2, "config')  # killed mid-write
    s2 = SampleStore(path)
    assert s2.done("s", 0, "h") and s2.done("s", 1, "h") and not s2.done("s", 2, "h")
    assert not s2.done("s", 0, "other-settings")
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    assert [r["doc_id"] for r in s2.current("s", "h")] == [0, 1]


def test_asr_is_averaged_per_behaviour_then_across():
    # behaviour a: 1 of 3 jailbroken; behaviour b: 1 of 1 -> (1/3 + 1) / 2, not 2/4
    recs = [_rec(0, "a", "jailbroken"), _rec(1, "a", "refused"), _rec(2, "a", "other"), _rec(3, "b", "jailbroken")]
    m = metrics("harmful", recs, ["j"])
    assert m["asr,j"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["refusal_rate,j"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["other_rate,j"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["asr_stderr,j"] > 0 and m["margin,none"] == pytest.approx(1.0)


def test_unavailable_judge_gives_null_not_zero():
    m = metrics("harmful", [_rec(0, "a", "unavailable")], ["j"])
    assert m["asr,j"] is None and m["refusal_rate,j"] is None


def test_validate_catches_shape_errors():
    good = {"results": {"clean": {"alias": "clean", "asr,j": 0.5}}, "configs": {"clean": {}},
            "versions": {"clean": 1}, "n-samples": {"clean": {}}, "judges": {"j": "ok"}, "config": {},
            "model_name": "m"}
    assert validate(good) == []
    bad = {**good, "results": {"clean": {"asr": 0.5, "asr,j": 1.5}}}
    errs = validate(bad)
    assert any("'<metric>,<filter>'" in e for e in errs) and any("outside [0, 1]" in e for e in errs)
    assert "missing top-level key 'judges'" in validate({k: v for k, v in good.items() if k != "judges"})
