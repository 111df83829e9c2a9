"""`adpo train` on the command line: resolved config, outputs, and clear errors."""

from __future__ import annotations

import json

import yaml

from adpo.cli import main


def cli_args(tiny_dir, export_dir, out, method="dpo", data=None):
    return ["train", "--method", method, "--model", str(tiny_dir), "--out", str(out), "--no-progress",
            "--data", str(data or export_dir / "preference_train.jsonl"), "train.steps=2", "train.batch_size=2"]


def test_train_writes_the_contract_and_prints_the_config(tiny_dir, export_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(cli_args(tiny_dir, export_dir, out) + ["train.beta=0.2"]) == 0
    printed = capsys.readouterr().out
    assert "resolved configuration" in printed and "beta: 0.2" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "dpo" and saved["train"]["beta"] == 0.2
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "metrics.jsonl").exists()
    assert (out / "checkpoints" / "step-000002" / "state.json").exists()
    # a second fresh run into the same folder would overwrite its checkpoints: refused
    assert main(cli_args(tiny_dir, export_dir, out)) == 2
    assert "--resume" in capsys.readouterr().err
    # resuming with other options is refused, naming the differing section
    assert main(cli_args(tiny_dir, export_dir, out) + ["--resume", "train.beta=0.5"]) == 2
    assert "['train']" in capsys.readouterr().err


def test_bad_row_names_file_row_and_field(tiny_dir, export_dir, tmp_path, capsys):
    rows = (export_dir / "preference_train.jsonl").read_text().splitlines()[:3]
    bad = json.loads(rows[1])
    bad["chosen"] = [{"role": "assistant", "content": ""}]
    data = export_dir / "bad_pairs.jsonl"  # next to the export's images/
    data.write_text("\n".join([rows[0], json.dumps(bad), rows[2]]) + "\n")
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r", data=data)) == 2
    err = capsys.readouterr().err
    assert f"{data}: row 2: field 'chosen" in err
    assert not (tmp_path / "r" / "adapter").exists()
    # a prompt longer than max_length (image tokens included) is refused, naming the row, not cut
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r2") + ["train.max_length=10"]) == 2
    assert "preference_train.jsonl: row" in (err := capsys.readouterr().err) and "max_length=10" in err


def test_method_errors_say_what_to_do(tiny_dir, export_dir, tmp_path, capsys):
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r", method="adpo")) == 2
    assert "needs --reference" in capsys.readouterr().err
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r", method="at")) == 2
    assert "--utility-data" in capsys.readouterr().err
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r") + ["train.threat=pixels"]) == 2
    assert "threat must be one of" in capsys.readouterr().err
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r") + ["train.scheduler=cosine_annealing"]) == 2
    assert "scheduler must be one of" in capsys.readouterr().err
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r") + ["train.log_every=0"]) == 2
    assert "log_every must be >= 1" in capsys.readouterr().err
    assert main(cli_args(tiny_dir, export_dir, tmp_path / "r") + ["image.epsilon=1"]) == 2
    assert "unknown option(s) ['epsilon'] in section 'image'" in capsys.readouterr().err
