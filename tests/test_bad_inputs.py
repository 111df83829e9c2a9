"""Golden tests for issue 17's table: every bad input or bad luck is one ``adpo: error: …`` line naming the
file, row and field (or the folder), exit status 2, and nothing written; nothing a user had is touched."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpo.cli import main

NEVER = "(adpo never deletes or overwrites what it did not write)"


def error_line(capsys) -> str:
    """The one error line (stderr may also hold transformers' weight-loading bars before it)."""
    lines = [x for x in capsys.readouterr().err.replace("\r", "\n").splitlines() if x.startswith("adpo:")]
    assert len(lines) == 1, lines
    return lines[0]


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def train_args(tiny_dir, data, out, *extra):
    return ["train", "--method", "dpo", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
            "--no-progress", "train.steps=1", "train.batch_size=2", *extra]


def eval_args(tiny_dir, export_dir, out, *extra):
    return ["eval", "--model", str(tiny_dir), "--out", str(out), "--tasks", "clean", "--no-progress", "limit=1",
            "max_new_tokens=2", f"data.harmful={export_dir / 'harmful_test.jsonl'}", *extra]


def pairs_file(export_dir, path: Path, n: int = 4, **change) -> Path:
    """The export's first ``n`` pairs with absolute image paths, the first row changed by ``change``."""
    rows = [json.loads(x) for x in (export_dir / "preference_train.jsonl").read_text().splitlines()[:n]]
    for r in rows:
        r["images"] = [str(export_dir / r["images"][0])]
    rows[0].update(change)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- nothing a user had is deleted or overwritten -----------------------------------------------------

def test_export_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "draft.tex").write_text("years of work")
    sizes = ["--n-pairs", "2", "--n-sft", "2", "--n-eval", "2"]
    assert main(["organism", "export", "--out", str(out), *sizes]) == 2
    assert error_line(capsys) == (f"adpo: error: {out} is not empty and was not written by adpo organism export; "
                                  f"choose a new or empty --out {NEVER}")
    assert only(out) == ["draft.tex"] and (out / "draft.tex").read_text() == "years of work"
    assert only(tmp_path) == ["thesis"]  # no lock or temp folder left beside it
    mine = tmp_path / "data"
    assert main(["organism", "export", "--out", str(mine), *sizes]) == 0
    assert main(["organism", "export", "--out", str(mine), *sizes]) == 0  # its own earlier export: replaced


@pytest.mark.parametrize("command", ["pretrain", "train", "eval", "demo"])
def test_every_command_refuses_an_occupied_out(command, tiny_dir, export_dir, tmp_path, capsys):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "results.json").write_text("{}")  # someone's results, under a name adpo also writes
    args = {"pretrain": ["organism", "pretrain", "--out", str(out)],
            "train": train_args(tiny_dir, export_dir / "preference_train.jsonl", out),
            "eval": eval_args(tiny_dir, export_dir, out), "demo": ["demo", "--out", str(out)]}[command]
    name = {"pretrain": "adpo organism pretrain"}.get(command, f"adpo {command}")
    assert main(args) == 2
    assert error_line(capsys) == (f"adpo: error: {out} is not empty and was not written by {name}; "
                                  f"choose a new or empty --out {NEVER}")
    assert only(out) == ["results.json"] and only(tmp_path) == ["occupied"]


def test_eval_refuses_another_commands_output(tiny_dir, export_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "adpo_output.json").write_text(json.dumps({"made_by": "adpo train"}))
    assert main(eval_args(tiny_dir, export_dir, out)) == 2
    assert error_line(capsys) == (f"adpo: error: {out} holds the output of adpo train; choose a new or empty "
                                  f"--out {NEVER}")


# ---- bad images, pairs, prompts ----------------------------------------------------------------------

def test_non_image_bytes_and_truncated_png_are_named_at_load(tiny_dir, export_dir, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"<html>not an image</html>")
    data = pairs_file(export_dir, tmp_path / "junk.jsonl", images=[str(junk)])
    out = tmp_path / "out"
    assert main(train_args(tiny_dir, data, out)) == 2
    assert error_line(capsys) == (f"adpo: error: {data}: row 1: field 'images': image file {junk} cannot be read as "
                                  f"an RGB image (UnidentifiedImageError: cannot identify image file '{junk}')")
    cut = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    data = pairs_file(export_dir, tmp_path / "cut.jsonl", n=3, images=[str(cut)])
    assert main(train_args(tiny_dir, data, out)) == 2
    assert error_line(capsys).startswith(f"adpo: error: {data}: row 1: field 'images': image file {cut} cannot be "
                                         "read as an RGB image (OSError: image file is truncated")
    assert not out.exists()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from adpo.data.formats import load_rows, open_image

    grey = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "g16.png", "question": "q", "chosen": "a",
                                                  "rejected": "b"}) + "\n")
    (row,) = load_rows(tmp_path / "d.jsonl", "pairs")
    assert np.asarray(open_image(row.image))[0, :, 0].tolist() == [0, 64, 128, 255]


def test_pairs_with_the_same_answers_are_refused_with_counts(tiny_dir, export_dir, tmp_path, capsys):
    from adpo.data.formats import load_rows
    from adpo.trainer.loop import check_pairs

    rows = [json.loads(x) for x in (export_dir / "preference_train.jsonl").read_text().splitlines()[:2]]
    for r in rows:  # an export gone wrong: the compliance was overwritten by the refusal
        r["images"], r["rejected"] = [str(export_dir / r["images"][0])], r["chosen"]
    data = tmp_path / "same.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(train_args(tiny_dir, data, out)) == 2
    assert error_line(capsys) == (f"adpo: error: {data}: row 1: field 'rejected': same text as 'chosen' (2 of 2 pairs "
                                  f"in {data} have the same chosen and rejected text); such pairs teach nothing: fix "
                                  "the data, or set train.allow_degenerate_pairs=true to keep them")
    assert not out.exists()
    said = []
    check_pairs(load_rows(data, "pairs"), str(data), allow=True, log=said.append)
    assert said == [f"warning: 2 of 2 pairs in {data} have the same chosen and rejected text (kept: "
                    "train.allow_degenerate_pairs=true)"]


@pytest.mark.parametrize("field", ["prompt", "chosen"])
def test_longer_than_the_models_context_is_refused_before_anything_is_written(field, tiny_dir, export_dir,
                                                                             tmp_path, capsys):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_dir).text_config.max_position_embeddings
    long = " ".join(["how do i paint the red passport"] * context)
    text = [{"type": "text", "text": long}]
    change = ({"prompt": [{"role": "user", "content": [{"type": "image"}, *text]}]} if field == "prompt" else
              {"chosen": [{"role": "assistant", "content": text}]})
    data = pairs_file(export_dir, tmp_path / "long.jsonl", **change)
    out = tmp_path / "out"
    assert main(train_args(tiny_dir, data, out)) == 2
    line = error_line(capsys)
    if field == "prompt":
        assert re.fullmatch(rf"adpo: error: {re.escape(str(data))}: row 1: field 'prompt': prompt has \d+ tokens "
                            rf"\(image tokens included\), more than the model's context of {context} tokens "
                            r"\(max_position_embeddings\)", line), line
    else:
        assert re.fullmatch(rf"adpo: error: {re.escape(str(data))}: row 1: field 'chosen': prompt and answer have \d+ "
                            rf"tokens, more than the model's context of {context} \(max_position_embeddings\); "
                            r"shorten it, or set train.max_length to cut answers", line), line
    assert not out.exists()


# ---- evaluation: the folder is never poisoned; adapters on their own base ------------------------------

def test_failed_eval_start_leaves_nothing_and_the_rerun_works(tiny_dir, export_dir, tmp_path, capsys):
    out, missing = tmp_path / "eval", tmp_path / "no-such-run"
    assert main(eval_args(tiny_dir, export_dir, out, "--adapter", str(missing))) == 2
    assert error_line(capsys) == (f"adpo: error: {missing} is neither a peft adapter, a model folder, nor an adpo "
                                  "run folder")
    assert main(eval_args(tiny_dir, export_dir, out, "--judges", "organism,foo")) == 2
    assert "foo" in error_line(capsys)  # one line, no traceback
    for limit in (0, -1):
        assert main(eval_args(tiny_dir, export_dir, out, f"limit={limit}")) == 2
        assert error_line(capsys) == (f"adpo: error: section 'eval': limit must be >= 1 (rows per task) or null "
                                      f"(every row), got {limit}")
    assert only(tmp_path) == []
    assert main(eval_args(tiny_dir, export_dir, out)) == 0
    assert json.loads((out / "adpo_output.json").read_text())["model"] == str(tiny_dir)


@pytest.fixture(scope="module")
def adapter_run(tiny_dir, export_dir, tmp_path_factory):
    from adpo.trainer.config import RunConfig
    from adpo.trainer.loop import train

    out = tmp_path_factory.mktemp("adapter") / "run"
    train(RunConfig.from_dict({"method": "dpo", "model": str(tiny_dir), "out": str(out),
                               "data": str(export_dir / "preference_train.jsonl"),
                               "train": {"steps": 1, "batch_size": 2}}), progress=False)
    return out


def test_adapter_on_another_base_is_one_line(adapter_run, tiny_dir, export_dir, processor, tiny_cfg, tmp_path,
                                             capsys):
    import dataclasses
    import shutil

    from adpo.models.adapters import architecture, weights_fingerprint
    from adpo.organism.build import build_model

    def base(name, cfg, seed):
        build_model(processor, 32, cfg, seed=seed).save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        return tmp_path / name

    adapter = adapter_run / "adapter"
    other = base("other", tiny_cfg, seed=1)  # same architecture, other weights
    assert main(eval_args(other, export_dir, tmp_path / "e1", "--adapter", str(adapter_run))) == 2
    assert error_line(capsys) == (f"adpo: error: adapter {adapter} was trained on base {tiny_dir} (weights "
                                  f"{weights_fingerprint(tiny_dir)}); --model {other} has other weights "
                                  f"({weights_fingerprint(other)}); pass the base it was trained on")
    wider = base("wider", dataclasses.replace(tiny_cfg, text_hidden=48, text_intermediate=96), seed=0)
    assert main(eval_args(wider, export_dir, tmp_path / "e2", "--adapter", str(adapter_run))) == 2
    assert error_line(capsys) == (f"adpo: error: adapter {adapter} was trained on {tiny_dir}, a "
                                  f"{architecture(tiny_dir)}; --model {wider} is a {architecture(wider)}: a "
                                  "different architecture; pass the base it was trained on")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "wider"]
    plain = tmp_path / "plain"  # a plain peft adapter records no base: peft's own error, in one line
    shutil.copytree(adapter, plain, ignore=shutil.ignore_patterns("adpo_train.json"))
    assert main(eval_args(wider, export_dir, tmp_path / "e3", "--adapter", str(plain))) == 2
    assert error_line(capsys).startswith(f"adpo: error: adapter {plain} does not fit --model {wider}: ")


# ---- one writer per folder; a full disk ----------------------------------------------------------------

def test_second_eval_into_a_busy_folder_is_refused(tiny_dir, export_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    holder = ("import sys, time\nfrom pathlib import Path\nfrom adpo.utils.lock import hold\n"
              "with hold(Path(sys.argv[1]), 'adpo eval'):\n    print('holding', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        assert main(eval_args(tiny_dir, export_dir, out)) == 2
        line = error_line(capsys)
    finally:
        child.kill()
        child.wait()
    assert line.startswith(f"adpo: error: {out} is being written by adpo eval (pid {child.pid} on ")
    assert line.endswith("; wait for it to finish or choose another --out") and not out.exists()


def test_full_disk_during_a_checkpoint_says_so(tiny_dir, export_dir, tmp_path, capsys, monkeypatch):
    import torch

    from adpo.utils import io as adpo_io

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(adpo_io, "free_bytes", lambda path: 2**20)
    out = tmp_path / "run"
    assert main(train_args(tiny_dir, export_dir / "preference_train.jsonl", out)) == 2
    step = out / "checkpoints" / "step-000001"
    assert error_line(capsys) == (f"adpo: error: no space left on the disk holding {step} (1 MiB free) while writing "
                                  "it; free some space and run the command again (what was complete before is intact; "
                                  "training continues with --resume)")
    assert only(out / "checkpoints") == [] and not (out / "adapter").exists()
