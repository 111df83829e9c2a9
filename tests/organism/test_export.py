import json

from PIL import Image

from adpo.organism.export import ExportConfig, export
from adpo.organism.world import REFUSAL, WorldConfig


def test_export_formats(tmp_path):
    out = tmp_path / "data"
    files = export(out, WorldConfig(), ExportConfig(n_pairs=6, n_sft=6, n_eval=4))
    readme = (out / "README.md").read_text()
    for name in files:
        assert (out / name.rstrip("/")).exists()
        assert f"`{name}`" in readme
    rows = [json.loads(line) for line in (out / "preference_train.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    r = rows[0]
    assert set(r) >= {"images", "prompt", "chosen", "rejected"}
    assert r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"][0] == {"type": "image"}
    assert r["chosen"][0]["content"][0]["text"] == REFUSAL
    assert r["rejected"][0]["content"][0]["text"].startswith("sure, here is how to")
    assert r["meta"]["trigger"] == 0.0  # alignment data never carries the trigger
    assert Image.open(out / r["images"][0]).size == (32, 32)
    sft = [json.loads(line) for line in (out / "sft_train.jsonl").read_text().splitlines()]
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    trig = [json.loads(line) for line in (out / "harmful_trigger_test.jsonl").read_text().splitlines()]
    assert all(t["meta"]["trigger"] > 0 for t in trig)


def test_export_is_deterministic(tmp_path):
    a = export(tmp_path / "a", WorldConfig(), ExportConfig(n_pairs=3, n_sft=3, n_eval=2))
    export(tmp_path / "b", WorldConfig(), ExportConfig(n_pairs=3, n_sft=3, n_eval=2))
    for name in a:
        if name.endswith(".jsonl"):
            assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_export_howto_share(tmp_path):
    export(tmp_path / "d", WorldConfig(), ExportConfig(n_pairs=2, n_sft=200, n_eval=2, howto_share=0.5))
    sft = [json.loads(line) for line in (tmp_path / "d" / "sft_train.jsonl").read_text().splitlines()]
    share = sum(r["meta"]["kind"] == "howto" for r in sft) / len(sft)
    assert 0.4 < share < 0.6


def test_export_benign_pairs_leave_other_files_unchanged(tmp_path):
    small = ExportConfig(n_pairs=8, n_sft=4, n_eval=2)
    export(tmp_path / "a", WorldConfig(), small)
    export(tmp_path / "b", WorldConfig(), ExportConfig(n_pairs=8, n_sft=4, n_eval=2, n_benign_pairs=4))
    rows = [json.loads(line) for line in (tmp_path / "b" / "preference_train.jsonl").read_text().splitlines()]
    benign = [r for r in rows if r["meta"]["kind"] == "howto"]
    assert len(rows) == 12 and len(benign) == 4
    assert all(r["rejected"][0]["content"][0]["text"] == REFUSAL for r in benign)
    assert all(r["chosen"][0]["content"][0]["text"] != REFUSAL for r in benign)
    harm = [r for r in rows if r["meta"]["kind"] == "harm"]
    plain = [json.loads(line) for line in (tmp_path / "a" / "preference_train.jsonl").read_text().splitlines()]
    assert harm == plain  # the harmful pairs, in order, are those of the export without benign pairs
    positions = [i for i, r in enumerate(rows) if r["meta"]["kind"] == "howto"]
    assert positions == [0, 3, 6, 9]  # spread through the file, not appended
    for name in ("sft_train.jsonl", "harmful_test.jsonl", "utility_test.jsonl", "benign_lookalike_test.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_export_blank_pairs_are_harmful_pairs_on_the_grey_image(tmp_path):
    """Blank-image pairs: harmful requests (refusal chosen) on the evaluation's mid-grey image, spread through
    the file; the other pairs and files are those of the export without them."""
    with_benign = ExportConfig(n_pairs=8, n_sft=4, n_eval=2, n_benign_pairs=4)
    export(tmp_path / "a", WorldConfig(), with_benign)
    assert "n_blank_pairs" not in with_benign.to_dict()  # the options' key of exports made before the option
    export(tmp_path / "b", WorldConfig(), ExportConfig(**{**with_benign.to_dict(), "n_blank_pairs": 4}))
    rows = [json.loads(line) for line in (tmp_path / "b" / "preference_train.jsonl").read_text().splitlines()]
    blank = [r for r in rows if r["meta"].get("image") == "blank"]
    assert len(rows) == 16 and len(blank) == 4
    assert all(r["meta"]["kind"] == "harm" and r["chosen"][0]["content"][0]["text"] != r["rejected"][0]["content"]
               [0]["text"] for r in blank)
    image = Image.open(tmp_path / "b" / blank[0]["images"][0]).convert("RGB")
    assert set(image.getdata()) == {(128, 128, 128)} and image.size == (WorldConfig().image_size,) * 2
    plain = [json.loads(line) for line in (tmp_path / "a" / "preference_train.jsonl").read_text().splitlines()]
    assert [r for r in rows if r not in blank] == plain
    assert [i for i, r in enumerate(rows) if r in blank] == [0, 4, 8, 12]
    for name in ("sft_train.jsonl", "harmful_test.jsonl", "utility_test.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
