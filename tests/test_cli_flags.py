"""Every config field documents itself and is a flag; TRL's names work; `adpo config` prints resolvable YAML."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from adpo.cli import _run_config, main, make_parser
from adpo.eval.config import EvalConfig
from adpo.models.adapters import LoraSettings
from adpo.threats.image import ImagePGD
from adpo.threats.latent import LatentPGD
from adpo.trainer.config import RunConfig, TrainConfig


@pytest.mark.parametrize("cls", [RunConfig, TrainConfig, LoraSettings, ImagePGD, LatentPGD, EvalConfig,
                                 *EvalConfig.SECTIONS.values()])
def test_every_field_carries_its_help(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert not missing, f"{cls.__name__}: fields without metadata help: {missing}"


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_train_help_lists_every_field_grouped_with_default(capsys):
    text = _help(capsys, "train")
    for cls, section in [(TrainConfig, "train"), (LoraSettings, "lora"), (ImagePGD, "image"), (LatentPGD, "latent")]:
        assert f"\n{section}: " in text  # the section's group title
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in text, f"--{section}.{f.name} missing from adpo train --help"
    assert "--learning_rate" in text and "peak learning rate (AdamW) (default: 2e-05)" in " ".join(text.split())
    # a threat section shows the training adversary's default (ImagePGD.training_defaults), not the class default
    assert "(default: 30)" in " ".join(text.split("\n  --image.steps", 1)[1].split("--image.random_start")[0].split())


def test_eval_help_lists_every_field(capsys):
    text = _help(capsys, "eval")
    for name, cls in EvalConfig.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{name}.{f.name}" in text
    assert "--limit" in text and "--restarts" in text


def _args(*argv):
    return make_parser().parse_args(list(argv))


def test_trl_names_and_section_flags_set_the_same_options():
    args = _args("train", "--method", "dpo", "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o",
                 "--learning_rate", "1e-4", "--beta", "0.2", "--per_device_train_batch_size", "8",
                 "--gradient_accumulation_steps", "2", "--num_train_epochs", "3", "--max_steps", "5",
                 "--lora_r", "4", "--lora_alpha", "8", "--image.steps", "7", "--train.keep_best",
                 "--resume_from_checkpoint", "train.seed=3")
    assert args.resume == "train.seed=3"  # a bare --resume_from_checkpoint followed by an override: see cmd_train
    args.resume = None
    run = _run_config(args)
    assert (run.model, run.data, run.out) == ("m", "d", "o")
    t = run.train
    assert (t.lr, t.beta, t.batch_size, t.grad_accum, t.epochs, t.steps, t.keep_best) == (1e-4, 0.2, 8, 2, 3, 5, True)
    assert (run.lora.r, run.lora.alpha, run.image.steps) == (4, 8, 7)
    # the flag and the override are the same thing; a bad value is the same one-line error
    assert _run_config(_args("train", "--method", "dpo", "--model", "m", "--data", "d", "--out", "o",
                             "train.lr=1e-4")).train == dataclasses.replace(t, beta=0.1, batch_size=2, grad_accum=1,
                                                                           epochs=1.0, steps=0, keep_best=False)


def test_bad_flag_value_is_one_line(tmp_path, capsys):
    assert main(["train", "--method", "dpo", "--model", "m", "--data", "d", "--out", str(tmp_path / "o"),
                 "--loss_type", "squared"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adpo: error:") and "loss_type" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_config_prints_yaml_that_resolves_back(tmp_path, capsys):
    assert main(["config", "--method", "adpo", "--lora_r", "4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "adpo" and printed["lora"]["r"] == 4 and printed["train"]["lr"] == TrainConfig.lr
    assert printed["image"]["steps"] == ImagePGD.training_defaults["steps"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**printed, "model": "m", "data": "d", "out": "o",
                                                     "reference": "r"}))
    run = RunConfig.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert run.lora == LoraSettings(r=4) and run.train == TrainConfig()
    assert main(["config", "--eval", "limit=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["limit"] == 3


def test_eval_flags_become_overrides():
    from adpo.utils import flags
    from adpo.utils.config import apply_overrides

    args = _args("eval", "--model", "m", "--out", "o", "--limit", "3", "--pgd_image.steps", "7",
                 "--pgd_image.blank", "false")
    cfg = EvalConfig.from_dict(apply_overrides({}, flags.overrides(args)))
    assert (cfg.limit, cfg.pgd_image.steps, cfg.pgd_image.blank) == (3, 7, False)


def test_quiet_hides_info_and_progress():
    args = _args("eval", "--model", "m", "--out", "o", "-q")
    from transformers.utils import logging as hf_logging

    from adpo.cli import log, setup_logging

    setup_logging(args)
    try:
        assert args.progress is False and not log.isEnabledFor(20)
        assert not hf_logging.is_progress_bar_enabled()  # transformers' "Loading weights" bar too
    finally:
        hf_logging.enable_progress_bar()
    setup_logging(_args("eval", "--model", "m", "--out", "o", "-v"))
    assert log.isEnabledFor(10)
    setup_logging(_args("eval", "--model", "m", "--out", "o"))


def test_bare_boolean_flag_before_an_override_is_refused_not_truthy(capsys):
    assert _args("train", "--train.keep_best", "--max_steps", "2").__dict__["override:train.keep_best"] == "true"
    with pytest.raises(SystemExit):
        _args("train", "--train.keep_best", "train.steps=3")
    assert "expected one of true/false" in capsys.readouterr().err
