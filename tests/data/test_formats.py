"""Dataset layouts -> PairRow / SFTRow, image resolution, and the "file: row N: field 'f'" error messages."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from adpo.data.formats import DataError, PairRow, SFTRow, load_rows, open_image


def _png(path, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), color).save(path)
    return path


def _write(path, rows):
    """Write ``rows`` as a .json list or as .jsonl lines (a str row is written verbatim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _user(*parts):
    return [{"role": "user", "content": [{"type": "image"}, *({"type": "text", "text": p} for p in parts)]}]


def _bot(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


SPA = {"image": "img.png", "question": "Q?", "chosen": "good", "rejected": "bad"}
PAIR_LAYOUTS = {
    "trl_conversational": ({"images": ["img.png"], "prompt": _user("Q?"), "chosen": _bot("good"),
                            "rejected": _bot("bad")}, "Q?", False),
    "trl_standard": ({"images": ["img.png"], "prompt": "USER: <image>\nQ? ASSISTANT:", "chosen": "good",
                      "rejected": "bad"}, "USER: <image>\nQ? ASSISTANT:", True),
    "llamafactory": ({"conversations": [{"from": "human", "value": "<image>Q?"}],
                      "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"},
                      "images": ["img.png"]}, "Q?", False),
    "spa_vl": (SPA, "Q?", False),
    "rlhf_v": ({"image": "img.png", "text": json.dumps({"question": "Q?", "chosen": "good", "rejected": "bad"})},
               "Q?", False),
    "beavertails_v": ({"question": "Q?", "image": "img.png", "response_1": "good", "response_2": "bad",
                       "safer_response_id": 1}, "Q?", False),
}


@pytest.mark.parametrize("rec,prompt,formatted", PAIR_LAYOUTS.values(), ids=PAIR_LAYOUTS.keys())
def test_pair_layouts(tmp_path, rec, prompt, formatted):
    img = _png(tmp_path / "img.png")
    (row,) = load_rows(_write(tmp_path / "d.jsonl", [rec]), "pairs")
    assert isinstance(row, PairRow)
    assert (row.prompt, row.chosen, row.rejected, row.formatted) == (prompt, "good", "bad", formatted)
    assert row.image == img
    assert row.source == f"{tmp_path / 'd.jsonl'}: row 1"


@pytest.mark.parametrize("pick,chosen,rejected", [(1, "one", "two"), (2, "two", "one"), ("2", "two", "one")])
def test_beavertails_safer_response_id_picks_chosen(tmp_path, pick, chosen, rejected):
    _png(tmp_path / "img.png")
    rec = {"question": "Q?", "image": "img.png", "response_1": "one", "response_2": "two", "safer_response_id": pick}
    (row,) = load_rows(_write(tmp_path / "d.jsonl", [rec]), "pairs")
    assert (row.chosen, row.rejected) == (chosen, rejected)


SFT_LAYOUTS = {
    "messages": {"images": ["img.png"], "messages": _user("Q?") + _bot("A.")},
    "sharegpt": {"images": ["img.png"], "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                           {"from": "gpt", "value": "A."}]},
    "prompt_completion": {"image": "img.png", "prompt": _user("Q?"), "completion": _bot("A.")},
}


@pytest.mark.parametrize("rec", SFT_LAYOUTS.values(), ids=SFT_LAYOUTS.keys())
def test_sft_layouts(tmp_path, rec):
    img = _png(tmp_path / "img.png")
    (row,) = load_rows(_write(tmp_path / "d.jsonl", [rec]), "sft")
    assert isinstance(row, SFTRow)
    assert (row.prompt, row.response, row.formatted, row.image) == ("Q?", "A.", False, img)


def test_sft_vlguard_gives_one_row_per_instruction(tmp_path):
    _png(tmp_path / "img.png")
    recs = [{"image": "img.png", "safe": True, "instr-resp": [
        {"safe_instruction": "Describe it.", "response": "A red square."},
        {"unsafe_instruction": "Help me hurt someone.", "response": "I can't help with that."}]},
        {"image": "img.png", "safe": False, "instr-resp": [{"instruction": "Do harm.", "response": "No."}]}]
    rows = load_rows(_write(tmp_path / "d.json", recs), "sft")
    assert [(r.prompt, r.response) for r in rows] == [
        ("Describe it.", "A red square."), ("Help me hurt someone.", "I can't help with that."), ("Do harm.", "No.")]
    assert [r.source.rsplit(": ", 1)[1] for r in rows] == ["row 1", "row 1", "row 2"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_and_jsonl_resolve_images_against_the_file_folder(tmp_path, suffix):
    img = _png(tmp_path / "data" / "imgs" / "a.png")
    path = _write(tmp_path / "data" / f"d{suffix}", [SPA | {"image": "imgs/a.png"}, SPA | {"image": str(img)}])
    rows = load_rows(path, "pairs")
    assert [r.image for r in rows] == [img, img]
    assert [r.source for r in rows] == [f"{path}: row 1", f"{path}: row 2"]


def test_image_root_override(tmp_path):
    img = _png(tmp_path / "elsewhere" / "img.png")
    path = _write(tmp_path / "data" / "d.jsonl", [SPA])
    (row,) = load_rows(path, "pairs", image_root=tmp_path / "elsewhere")
    assert row.image == img
    with pytest.raises(DataError, match="not found"):  # without the override it looks next to the file
        load_rows(path, "pairs")


def test_open_image_path_and_bytes(tmp_path):
    path = _png(tmp_path / "img.png", color=(10, 20, 30, 255), mode="RGBA")
    im = open_image(path)
    assert (im.mode, im.size, im.getpixel((0, 0))) == ("RGB", (8, 8), (10, 20, 30))
    im = open_image({"bytes": path.read_bytes(), "path": None})
    assert (im.mode, im.size, im.getpixel((0, 0))) == ("RGB", (8, 8), (10, 20, 30))
    assert open_image(Image.new("L", (8, 8), 5)).mode == "RGB"


def test_bytes_image_passes_through_load_rows(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    rec = SPA | {"image": {"bytes": list(buf.getvalue())}}  # JSON has no bytes type; just check it is kept
    (row,) = load_rows(_write(tmp_path / "d.jsonl", [rec]), "pairs")
    assert row.image == rec["image"]


MULTI_TURN = {"images": ["img.png"], "conversations": [{"from": "human", "value": "<image>Q?"},
                                                       {"from": "gpt", "value": "A."},
                                                       {"from": "human", "value": "more?"}],
              "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
ERRORS = {  # second row is bad: (row, kind, what the message must contain)
    "invalid_json": ('{"image": "img.png", "question": ', "pairs", ["not valid JSON"]),
    "missing_image": (SPA | {"image": "nope.png"}, "pairs", ["field 'image'", "nope.png", "not found"]),
    "two_images": ({"images": ["img.png", "img.png"], "prompt": "p", "chosen": "c", "rejected": "r"}, "pairs",
                   ["field 'images'", "exactly one image", "got 2"]),
    "empty_chosen": (SPA | {"chosen": "  "}, "pairs", ["field 'chosen'", "non-empty string"]),
    "unknown_pair_layout": ({"image": "img.png", "foo": 1}, "pairs", ["unknown preference layout", "'foo'"]),
    "unknown_sft_layout": ({"image": "img.png", "foo": 1}, "sft", ["unknown SFT layout"]),
    "pair_ends_with_answer": (MULTI_TURN | {"conversations": MULTI_TURN["conversations"][:2]}, "pairs",
                              ["field 'conversations'", "ending with user", "['user', 'assistant']"]),
    "sft_two_users": ({"images": ["img.png"], "conversations": [{"from": "human", "value": "a"},
                                                                {"from": "human", "value": "b"}]}, "sft",
                      ["field 'conversations'", "alternating"]),
    "bad_safer_id": ({"question": "Q?", "image": "img.png", "response_1": "a", "response_2": "b",
                      "safer_response_id": 3}, "pairs", ["field 'safer_response_id'", "3"]),
    "rlhf_v_bad_text": ({"image": "img.png", "text": "{not json"}, "pairs", ["field 'text'", "not a JSON"]),
    "vlguard_no_response": ({"image": "img.png", "instr-resp": [{"instruction": "x"}]}, "sft",
                            ["field 'instr-resp[0]'"]),
}


@pytest.mark.parametrize("bad,kind,needles", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_file_row_and_field(tmp_path, bad, kind, needles):
    _png(tmp_path / "img.png")
    good = SPA if kind == "pairs" else SFT_LAYOUTS["sharegpt"]
    path = _write(tmp_path / "d.jsonl", [good, bad])
    with pytest.raises(DataError) as e:
        load_rows(path, kind)
    msg = str(e.value)
    assert msg.startswith(f"{path}: row 2: "), msg
    for needle in needles:
        assert needle in msg, msg


def test_image_record_without_bytes_or_path_is_an_error(tmp_path):
    path = _write(tmp_path / "d.jsonl", [SPA | {"image": {"bytes": None, "path": None}}])
    with pytest.raises(DataError, match=r": row 1: field 'image'"):
        load_rows(path, "pairs")


def test_error_row_number_in_json_list(tmp_path):
    _png(tmp_path / "img.png")
    path = _write(tmp_path / "d.json", [SPA, SPA, SPA | {"rejected": ""}])
    with pytest.raises(DataError, match=r": row 3: field 'rejected'"):
        load_rows(path, "pairs")


def test_missing_file_and_empty_file(tmp_path):
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match="not found") as e:
        load_rows(missing, "pairs")
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no pairs rows") as e:
        load_rows(empty, "pairs")
    assert str(empty) in str(e.value)


def test_image_size_gives_qwen_one_patch_grid_per_batch():
    """Dynamic-resolution families patchify each image at its own size; batched image attacks need one grid."""
    import numpy as np
    from PIL import Image

    from adpo.data.formats import open_image
    from adpo.models import synthetic
    from adpo.threats.codecs import codec_for

    processor = synthetic.build_processor("qwen2_vl", synthetic.TINY_QWEN)
    rng = np.random.default_rng(0)
    raw = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((32, 48), (48, 32))]
    grids = processor.image_processor(raw, return_tensors="pt")["image_grid_thw"]
    assert len({tuple(g.tolist()) for g in grids}) == 2
    fitted = [open_image(im, 32) for im in raw]
    out = processor.image_processor(fitted, return_tensors="pt")
    assert all(im.size == (32, 32) for im in fitted)
    assert codec_for(processor).decode(out["pixel_values"], out["image_grid_thw"]).shape == (2, 3, 32, 32)


def test_multi_turn_rows_keep_their_history(tmp_path):
    """Multi-turn sharegpt: a pair ranks the last turn with the history in its prompt; an SFT row keeps every
    turn (all trained, data/collate); a TRL conversational prompt may be multi-turn too."""
    _png(tmp_path / "img.png")
    (pair,) = load_rows(_write(tmp_path / "p.jsonl", [MULTI_TURN]), "pairs")
    assert (pair.history, pair.prompt, pair.chosen) == ((("Q?", "A."),), "more?", "good")
    trl = {"images": ["img.png"], "prompt": _user("Q?") + _bot("A.") + _user("more?"), "chosen": "c", "rejected": "r"}
    (pair,) = load_rows(_write(tmp_path / "t.jsonl", [trl]), "pairs")
    assert (pair.history, pair.prompt) == ((("Q?", "A."),), "more?")
    conv = [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    (sft,) = load_rows(_write(tmp_path / "s.jsonl", [{"images": ["img.png"], "conversations": conv}]), "sft")
    assert (sft.history, sft.prompt, sft.response) == ((("Q1", "A1"),), "Q2", "A2")


def test_text_only_rows_get_a_blank_image_and_are_counted(tmp_path):
    from adpo.data.formats import BLANK

    _png(tmp_path / "img.png")
    text_only = {k: v for k, v in SPA.items() if k != "image"}
    lines: list[str] = []
    rows = load_rows(_write(tmp_path / "d.jsonl", [SPA, text_only, text_only | {"images": []}]), "pairs",
                     log=lines.append)
    assert [r.image is BLANK for r in rows] == [False, True, True]
    assert "2 of 3 rows" in lines[0] and "blank" in lines[0]
    assert open_image(BLANK).getpixel((0, 0)) == (128, 128, 128)


def test_dataset_info_folder_by_name(tmp_path):
    """``DIR:name`` reads LLaMA-Factory's dataset_info.json: file, columns, tags, ranking, alpaca too."""
    _png(tmp_path / "img.png")
    info = {"mine": {"file_name": "m.json", "formatting": "sharegpt", "ranking": True,
                     "columns": {"messages": "turns", "chosen": "good", "rejected": "bad", "images": "pics"},
                     "tags": {"role_tag": "r", "content_tag": "c", "user_tag": "u", "assistant_tag": "a"}},
            "alp": {"file_name": "a.json", "columns": {"prompt": "instruction", "response": "output",
                                                       "history": "history", "images": "images"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    _write(tmp_path / "m.json", [{"turns": [{"r": "u", "c": "<image>Q?"}], "good": {"r": "a", "c": "no"},
                                  "bad": {"r": "a", "c": "yes"}, "pics": ["img.png"]}])
    _write(tmp_path / "a.json", [{"instruction": "Q2", "output": "A2", "history": [["Q1", "A1"]],
                                  "images": ["img.png"]}])
    (pair,) = load_rows(f"{tmp_path}:mine", "pairs")
    assert (pair.prompt, pair.chosen, pair.rejected, pair.image) == ("Q?", "no", "yes", tmp_path / "img.png")
    (sft,) = load_rows(f"{tmp_path}:alp", "sft")
    assert (sft.history, sft.prompt, sft.response) == ((("Q1", "A1"),), "Q2", "A2")
    with pytest.raises(DataError, match="no dataset named 'nope'"):
        load_rows(f"{tmp_path}:nope", "pairs")
    with pytest.raises(DataError, match="ranking"):
        load_rows(f"{tmp_path}:mine", "sft")
