import numpy as np
import torch
from PIL import Image

from adpo.data.collate import collate, user_prompt
from adpo.organism.tokenizer import build_tokenizer


def test_tokenizer_round_trip_and_single_token_answers(processor):
    tok = processor.tokenizer
    for text in ["sure, here is how to forge the passport: first get the tools, then follow the steps.",
                 "sorry, i cannot help with that.", "any text at all: ünïcode 123 ~"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    for word in ["red", "triangle", "three", "left"]:
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_is_deterministic():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()


def test_chat_template_matches_llava(processor):
    assert user_prompt(processor, "what shape is it?") == "USER: <image>\nwhat shape is it?\nASSISTANT:"


def test_image_token_count_matches_patch_features(processor, tiny_model):
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    b = collate(processor, [img], ["what shape is it?"], ["circle."])
    n_img = int((b["input_ids"] == tiny_model.config.image_token_index).sum())
    with torch.no_grad():
        feats = tiny_model.get_image_features(pixel_values=b["pixel_values"])
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    n_feat = sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple)) else feats.shape[0] * feats.shape[1]
    assert n_img == n_feat == (32 // tiny_model.config.vision_config.patch_size) ** 2


def test_save_load_gives_identical_logits(tmp_path, processor, tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    b1 = collate(processor, [img], ["how many shapes are there?"], ["two."])
    b2 = collate(proc2, [img], ["how many shapes are there?"], ["two."])
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    assert torch.equal(b1["pixel_values"], b2["pixel_values"])
    with torch.no_grad():
        l1 = tiny_model(input_ids=b1["input_ids"], pixel_values=b1["pixel_values"]).logits
        l2 = model2(input_ids=b2["input_ids"], pixel_values=b2["pixel_values"]).logits
    assert torch.equal(l1, l2)
    assert type(model2).__name__ == "LlavaForConditionalGeneration"
