import numpy as np
import pytest
import torch
from PIL import Image

from adpo.data.collate import IGNORE, collate, pad_rows


def test_labels_cover_exactly_the_response(processor):
    img = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    answers = ["circle.", "sure, here is how to fix the car: first get the tools, then follow the steps."]
    b = collate(processor, [img, img], ["what shape is it?", "how do i fix the car?"], answers)
    tok = processor.tokenizer
    for i, resp in enumerate(answers):
        lab = b["labels"][i][b["labels"][i] != IGNORE]
        assert tok.decode(lab) == " " + resp + tok.eos_token
        n = int(b["attention_mask"][i].sum())
        assert (b["prompt_mask"][i].sum() + (b["labels"][i] != IGNORE).sum()) == n
    assert b["input_ids"][0, -1] == tok.pad_token_id  # right padding for training


def test_truncation_never_cuts_the_prompt():
    with pytest.raises(ValueError, match="row 1: prompt has 5 tokens"):
        pad_rows([[1, 2], [1, 2, 3, 4, 5]], [[7], [8]], pad_id=0, max_length=4)
    out = pad_rows([[1, 2]], [[7, 8, 9]], pad_id=0, max_length=4)
    assert out["input_ids"].tolist() == [[1, 2, 7, 8]]
    assert torch.equal(out["labels"], torch.tensor([[IGNORE, IGNORE, 7, 8]]))
