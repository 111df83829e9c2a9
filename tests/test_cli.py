import pytest

from adpo.cli import main


def test_unknown_world_option_is_one_clear_error(tmp_path, capsys):
    assert main(["organism", "pretrain", "--out", str(tmp_path), "world.colourz=3"]) == 2
    err = capsys.readouterr().err
    assert "colourz" in err and "section 'world'" in err
    assert not (tmp_path / "model").exists()


def test_unknown_section(tmp_path, capsys):
    assert main(["organism", "pretrain", "--out", str(tmp_path), "optim.lr=1"]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_invalid_world_value(tmp_path, capsys):
    assert main(["organism", "export", "--out", str(tmp_path / "d"), "world.trigger_amplitude=[0.9, 0.1]"]) == 2
    assert "trigger_amplitude" in capsys.readouterr().err


def test_export_via_cli(tmp_path, capsys):
    assert main(["organism", "export", "--out", str(tmp_path / "d"), "--n-pairs", "2", "--n-sft", "2",
                 "--n-eval", "2"]) == 0
    assert (tmp_path / "d" / "preference_train.jsonl").exists()
    assert "resolved configuration" in capsys.readouterr().out


def test_export_extra_pairs_via_cli(tmp_path, capsys):
    assert main(["organism", "export", "--out", str(tmp_path / "d"), "--n-pairs", "2", "--n-sft", "2",
                 "--n-eval", "2", "--n-benign-pairs", "1", "--n-blank-pairs", "2"]) == 0
    rows = (tmp_path / "d" / "preference_train.jsonl").read_text().splitlines()
    assert len(rows) == 5 and sum('"image": "blank"' in r for r in rows) == 2


def test_demo_help_lists_its_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "blank_pairs=0" in out and "benign_pairs=128" in out and "arms=[base,dpo,adpo]" in out


def test_inspect_prints_what_adpo_reads_from_a_model(tmp_path, capsys):
    import yaml

    from adpo.models import synthetic

    model, processor = synthetic.build("idefics3")
    synthetic.save(model, processor, tmp_path / "m")
    assert main(["inspect", "--model", str(tmp_path / "m")]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["family"] == "Idefics3 / SmolVLM" and out["pixel_codec"] == "PaddedCropCodec"
    assert out["decoder"].startswith("model.text_model (2 layers")
    assert "model\\.text_model\\.layers" in out["lora_target (auto)"]


def test_inspect_refuses_a_text_only_model_in_one_line(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    capsys.readouterr()
    assert main(["inspect", "--model", str(tmp_path / "llama")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adpo: error:") and "model_type 'llama'" in err and "not a vision-language model" in err
