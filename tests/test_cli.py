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
