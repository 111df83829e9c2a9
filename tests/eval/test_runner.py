"""`adpo eval` on the tiny organism: every task writes schema-valid records, results.json validates, an
interrupted run resumes without redoing samples, the judge-unavailable path, monotonicity in attack steps,
and latent perturbations reach the same tokens in generation as in the attack."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

from adpo.eval import attacks
from adpo.eval.attacks import Target, _Batch, _generate
from adpo.eval.config import EvalConfig
from adpo.eval.data import load_harmful
from adpo.eval.judges import Verdict
from adpo.eval.results import validate
from adpo.eval.runner import ModelSpec, evaluate, load_model
from adpo.eval.suites import SUITES
from adpo.eval.tasks import TASKS
from adpo.threats import AttackResult, LatentPGD
from adpo.threats.codecs import codec_for
from adpo.threats.hooks import residual_perturbation

RECORD_KEYS = {"task", "subtask", "doc_id", "behavior_id", "behavior", "category", "prompt", "image_sha256",
               "response", "attack", "judges", "gen_kwargs", "config_hash"}
HARMFUL_KEYS = {"target", "margin", "attack_loss", "success_step", "restart", "norms"}


def config(export_dir, **over) -> EvalConfig:
    raw = {"tasks": list(TASKS), "limit": 4, "benign_limit": 4, "batch_size": 4, "max_new_tokens": 6, "check_every": 2,
           "judges": ["organism", "gcg13", "llm_attacks29", "llm"],
           "data": {"harmful": str(export_dir / "harmful_test.jsonl"),
                    "utility": str(export_dir / "utility_test.jsonl"),
                    "benign": str(export_dir / "benign_lookalike_test.jsonl"),
                    "universal_train": str(export_dir / "preference_train.jsonl")},
           "pgd_image": {"eps": ["8/255", "inf"], "steps": 2, "blank_steps": 2, "noise": True},
           "universal_image": {"steps": 2, "train_n": 4}, "latent": {"eps": [0.5], "steps": 2},
           "attacks": [{"threat": "image", "name": "l2@1", "norm": "l2", "eps": 1.0, "step_size": 0.25, "steps": 2}],
           "figstep": {"size": 96, "font_size": 10}}
    raw.update(over)
    return EvalConfig.from_dict(raw)


@pytest.fixture(scope="module")
def run(tiny_dir, export_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    res = evaluate([ModelSpec("tiny", str(tiny_dir))], config(export_dir), out, progress=False, log=lambda s: None)
    return out, res["tiny"]


def test_every_task_writes_schema_valid_records(run):
    out, res = run
    subtasks = {"clean", "pgd-image@8/255", "pgd-image@inf", "pgd-blank", "pgd-noise", "universal-image@16/255",
                "universal-blank", "latent@0.5", "l2@1", "trigger", "figstep", "utility", "over-refusal"}
    assert set(res["results"]) == subtasks
    for task in TASKS:
        lines = (out / f"samples_{task}.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert recs and all(RECORD_KEYS <= set(r) for r in recs), task
        for r in recs:
            assert len(r["image_sha256"]) == 64 and r["attack"]["seed"] == 0
            assert r["gen_kwargs"] == {"max_new_tokens": 6, "do_sample": False}
            if task == "utility":
                assert r["score"] in (0.0, 1.0) and r["judges"] == {}
                continue
            assert set(r["judges"]) == {"organism", "gcg13", "llm_attacks29", "llm"}
            assert r["judges"]["llm"]["label"] == "unavailable"
            if task not in ("over-refusal",):
                assert HARMFUL_KEYS <= set(r)
    pgd = [json.loads(x) for x in (out / "samples_pgd-image.jsonl").read_text().splitlines()]
    for r in pgd:
        if r["subtask"] == "pgd-image@8/255":
            assert r["norms"]["image_linf"] <= 8 / 255 + 1e-6
    assert {r["subtask"]: r["attack"]["params"]["source"] for r in pgd}["pgd-noise"] == "noise"


def test_results_json_validates_and_nulls_the_unavailable_judge(run):
    out, res = run
    on_disk = json.loads((out / "results.json").read_text())
    assert validate(on_disk) == []
    assert on_disk["judges"]["llm"].startswith("unavailable") and on_disk["judges"]["organism"] == "ok"
    for name, r in on_disk["results"].items():
        kind = on_disk["configs"][name]["kind"]
        if kind == "harmful":
            assert r["asr,llm"] is None and r["asr,organism"] is not None
            assert 0 <= r["asr,gcg13"] <= 1
        assert on_disk["n-samples"][name]["effective"] == 4
    assert on_disk["group_subtasks"]["pgd-image"] == ["pgd-image@8/255", "pgd-image@inf", "pgd-blank", "pgd-noise"]
    art = json.loads((out / "jailbreakbench" / "pgd-image_8_255.json").read_text())
    assert art["parameters"]["attack_type"] == "white_box" and len(art["jailbreaks"]) == 4
    assert {"index", "goal", "behavior", "prompt", "response", "jailbroken"} <= set(art["jailbreaks"][0])
    assert (out / "report.md").read_text().count("| pgd-image@8/255 |") == 1
    assert (out / "asr_vs_budget.png").stat().st_size > 1000


def test_resume_skips_done_samples(run, tiny_dir, export_dir, monkeypatch):
    out, _ = run
    path = out / "samples_pgd-image.jsonl"
    lines = path.read_text().splitlines()
    kept = [x for x in lines if json.loads(x)["doc_id"] != 3]
    path.write_text("\n".join(kept) + "\n" + lines[-1][:20])  # one doc lost, and a cut line
    calls = []
    real = attacks.optimise
    monkeypatch.setattr(attacks, "optimise",
                        lambda *a, **k: calls.append(a[1]["pixel_values"].shape[0]) or real(*a, **k))
    res = evaluate([ModelSpec("tiny", str(tiny_dir))], config(export_dir), out, progress=False, log=lambda s: None)
    per_subtask = sum(v.restarts or 1 for v in SUITES[EvalConfig().suite])  # every attack run of the suite
    assert calls == [1] * 4 * per_subtask  # only doc 3, in each of the 4 pgd-image subtasks; other tasks untouched
    assert len(path.read_text().splitlines()) == len(lines)
    assert all(v["effective"] == 4 for v in res["tiny"]["n-samples"].values())


def test_another_model_in_the_same_folder_is_refused(run, export_dir):
    from adpo.utils.config import ConfigError

    out, _ = run
    with pytest.raises(ConfigError, match="holds an evaluation"):
        evaluate([ModelSpec("x", str(export_dir))], config(export_dir), out, progress=False, log=lambda s: None)


class FirstWord:
    """A judge for the monotonicity check on an untrained model: success = the target's first word first."""

    name, status = "first-word", "ok"

    def __init__(self, rows):
        self.first = {r.prompt: r.target.split()[0].rstrip(",.") for r in rows}

    def __call__(self, behaviours, responses, metas):
        return [Verdict("jailbroken" if r.startswith(self.first[b]) else "refused") for b, r in
                zip(behaviours, responses)]


def test_more_steps_never_lower_asr(tiny_dir, export_dir, capsys):
    model, processor = load_model(ModelSpec("tiny", str(tiny_dir)))
    rows = load_harmful(export_dir / "harmful_test.jsonl", 8)
    t = Target(model, processor, codec_for(processor), FirstWord(rows), max_new_tokens=2, check_every=2)
    found = {}
    for steps in (4, 12, 30):
        lat = LatentPGD(eps=1.0, step_size=0.01, steps=steps, layers=(0,), relative=True, random_start=True)
        outs = attacks.attack(t, rows, [r.image for r in rows], seed=0, threat=lat)
        found[steps] = {i: o.step for i, o in enumerate(outs) if o.step is not None}
    assert len(found[30]) > len(found[4]), "more steps found nothing more: the check would be vacuous"
    for weak, strong in ((4, 12), (12, 30)):
        assert set(found[weak]) <= set(found[strong])
        assert all(found[strong][i] == s for i, s in found[weak].items())  # same trajectory, same first success
    # restarts only add successes; the progress bar shows the steps done and the ASR at checkpoints
    t.restarts, t.progress = 2, True
    capsys.readouterr()
    lat = LatentPGD(eps=1.0, step_size=0.01, steps=12, layers=(0,), relative=True, random_start=True)
    outs = attacks.attack(t, rows, [r.image for r in rows], seed=0, threat=lat)
    assert set(found[12]) <= {i for i, o in enumerate(outs) if o.step is not None}
    bar = capsys.readouterr().err
    assert "LatentPGD x8" in bar and "/24" in bar and f"ASR {len(found[12]) / 8:.0%}" in bar


def test_latent_perturbation_hits_the_same_tokens_when_generating(tiny_model, processor, export_dir):
    rows = load_harmful(export_dir / "harmful_test.jsonl", 4)
    assert len({len(r.prompt) for r in rows}) > 1  # prompts of different lengths: padding differs
    t = Target(tiny_model, processor, codec_for(processor), FirstWord(rows), max_new_tokens=1)
    b = _Batch.build(t, rows, [r.image for r in rows], [r.prompt for r in rows])
    mask = (b.target["prompt_mask"] & b.target["attention_mask"].bool())
    width = int(mask.sum(1).max())
    mask = mask[:, :width]
    g = torch.Generator().manual_seed(0)
    deltas = {-2 % 2: torch.randn(len(rows), width, tiny_model.config.text_config.hidden_size, generator=g) * 30}
    snap = AttackResult(loss=torch.zeros(4), settings={}, latent=deltas, prompt_mask=mask)
    lengths = mask.sum(1)

    def first_tokens(perturb: bool) -> list[str]:
        with torch.no_grad(), (residual_perturbation(tiny_model, deltas, mask) if perturb else torch.no_grad()):
            logits = tiny_model(**{k: v for k, v in b.target.items() if k not in ("labels", "prompt_mask")}).logits
        ids = logits[torch.arange(4), lengths - 1].argmax(-1)
        return [processor.tokenizer.decode([int(i)], skip_special_tokens=True).strip() for i in ids]

    assert _generate(t, b, snap) == first_tokens(True)
    assert first_tokens(True) != first_tokens(False)  # the perturbation matters, so the check is not vacuous
    assert _generate(t, b, None) == first_tokens(False)


def test_latent_task_reports_relative_budget(run):
    out, _ = run
    recs = [json.loads(x) for x in (out / "samples_latent.jsonl").read_text().splitlines()]
    assert all(r["attack"]["params"]["relative"] and r["attack"]["params"]["eps"] == 0.5 for r in recs)
    assert all(any(k.startswith("latent_eps@") for k in r["norms"]) for r in recs)


def test_cli_eval_compare_mode(tiny_dir, export_dir, tmp_path, capsys):
    from adpo.cli import main

    data = [f"data.harmful={export_dir / 'harmful_test.jsonl'}"]
    rc = main(["eval", "--model", str(tiny_dir), "--compare", "a=base", f"b={tiny_dir}", "--tasks", "clean",
               "--out", str(tmp_path / "cmp"), "--no-progress", "limit=2", *data])
    assert rc == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| subtask | a | b |" in report and (tmp_path / "cmp" / "a" / "results.json").is_file()
    assert main(["eval", "--model", str(tiny_dir), "--tasks", "clean,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_dir), "--tasks", "utility", "--out", str(tmp_path / "y")]) == 2
    assert "data.utility" in capsys.readouterr().err


def test_latent_config_rejects_bad_budget(export_dir):
    from adpo.utils.config import ConfigError

    with pytest.raises(ConfigError, match="budget"):
        config(export_dir, pgd_image={"eps": ["sixteen"]})
    with pytest.raises(ConfigError, match="unknown option"):
        config(export_dir, latent={"epsilon": 1})
    assert LatentPGD  # the engine's class is what the task builds


def test_training_attack_steps_read_from_the_run(tmp_path):
    from adpo.eval.runner import training_attack_steps

    ad = tmp_path / "run" / "adapter"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text("{}")
    (ad / "adpo_train.json").write_text(json.dumps({"config": {"image": {"steps": 5}, "latent": {"steps": 7}}}))
    assert training_attack_steps(ModelSpec("a", "m", str(tmp_path / "run"))) == 7
    assert training_attack_steps(ModelSpec("a", "m", None)) == 0


def test_jailbreakbench_artifacts_validate_against_its_pydantic_model(run):
    """Strict JSON validation (as reading a file back would be): a datetime, a tuple or a None parameter fails."""
    from jbb_artifact_schema import AttackArtifact  # tests/eval/, vendored from jailbreakbench 1.0.0

    out, _ = run
    files = sorted((out / "jailbreakbench").glob("*.json"))
    assert len(files) >= 5
    for f in files:
        art = AttackArtifact.model_validate_json(f.read_text(), strict=False)
        assert art.parameters.evaluation_date.isoformat() == json.loads(f.read_text())["parameters"]["evaluation_date"]
        assert len(art.jailbreaks) == art.parameters.number_of_submitted_prompts
    bad = json.loads(files[0].read_text())
    bad["parameters"]["method_parameters"]["eps"] = [0.1, None]
    with pytest.raises(ValueError):
        AttackArtifact.model_validate(bad)


def test_results_follow_lmms_eval_layout(run):
    """lmms-eval 0.7's EvaluationTracker writes ``<output>/<model_name_sanitized>/<date_id>_results.json`` with
    ``task_hashes``, ``git_hash``, ``n-shot`` beside the aggregate keys (lmms_eval/loggers/evaluation_tracker.py)."""
    out, res = run
    folder, latest = out / res["model_name_sanitized"], json.loads((out / "results.json").read_text())
    copies = sorted(folder.glob("*_results.json"))  # one dated copy per run, as lmms-eval's tracker writes
    assert all(re.fullmatch(r"\d{8}_\d{6}_results\.json", c.name) for c in copies)
    assert (folder / f"{res['date_id']}_results.json").is_file()
    on_disk = json.loads((folder / f"{latest['date_id']}_results.json").read_text())
    assert on_disk == latest
    for key in ("results", "configs", "versions", "n-shot", "n-samples", "higher_is_better", "group_subtasks",
                "task_hashes", "git_hash", "date", "model_name", "model_name_sanitized"):
        assert key in on_disk, key
    assert set(on_disk["task_hashes"]) == set(on_disk["results"]) == set(on_disk["n-shot"])
    assert all(len(h) == 64 for h in on_disk["task_hashes"].values())


@pytest.mark.parametrize("writer", ["vendored", pytest.param("lmms_eval", marks=pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval itself not installed (not in dev: see "
    "tests/eval/lmms_eval_writer.py); `pip install --no-deps lmms-eval==0.7.3 pytz loguru` checks the copy"))])
def test_lmms_eval_writer_puts_our_results_where_we_do(run, tmp_path, writer):
    """lmms-eval 0.7.3's own writer (vendored in tests/eval/lmms_eval_writer.py, or the package when installed),
    given our aggregate and our samples' doc hashes, writes the same file name and task_hashes as ``adpo eval``,
    and lmms-eval's reader of a results folder picks our copy out."""
    import datetime

    import lmms_eval_writer as vendored

    if writer == "lmms_eval":
        from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
    else:
        EvaluationTracker = vendored.EvaluationTracker
    from adpo.eval.results import doc_hash

    out, _ = run
    res = json.loads((out / "results.json").read_text())  # the module's latest run (each run adds a dated copy)
    samples = {}  # each subtask's current records in doc order, as lmms-eval's samples with their doc_hash
    for task in {c["task"] for c in res["configs"].values()}:
        for line in (out / f"samples_{task}.jsonl").read_text().splitlines():
            r = json.loads(line)
            samples.setdefault(r["subtask"], {})[r["doc_id"]] = {"doc_hash": doc_hash(r)}
    tracker = EvaluationTracker(output_path=str(tmp_path))
    tracker.general_config_tracker.model_name = res["model_name"]
    tracker.general_config_tracker.model_name_sanitized = res["model_name_sanitized"]
    theirs_in = {k: v for k, v in res.items() if k != "task_hashes"}
    tracker.save_results_aggregated(theirs_in, {k: [v[d] for d in sorted(v)] for k, v in samples.items()},
                                    res["date_id"])
    (theirs,) = (tmp_path / res["model_name_sanitized"]).glob("*_results.json")
    ours = out / res["model_name_sanitized"] / theirs.name  # the same folder and file name
    assert ours.is_file()
    written = json.loads(theirs.read_text())
    assert written["task_hashes"] == res["task_hashes"]  # their hash of our samples is ours
    assert set(json.loads(ours.read_text())) >= set(res)
    assert vendored.sanitize_model_name(res["model_name"]) == res["model_name_sanitized"]
    datetime.datetime.strptime(res["date_id"], vendored.DATETIME_FORMAT)  # their get_datetime_str format
    assert str(ours) in vendored.get_results_filenames([str(f) for f in ours.parent.iterdir()])  # their reader
