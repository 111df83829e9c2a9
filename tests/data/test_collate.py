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


def test_response_wrapping_follows_the_chat_template(processor):
    import copy

    from adpo.data.collate import _response_wrap, encode_responses

    assert _response_wrap(processor) == (" ", "</s>")  # the organism: "ASSISTANT: …</s>"
    qwen = copy.deepcopy(processor)
    qwen.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
        "{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert _response_wrap(qwen) == ("", "</s>")  # no space, cut after the end of turn
    llava_hf = copy.deepcopy(processor)  # llava-hf style: {% generation %} tag, turn ends with a space, no EOS
    llava_hf.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: <image>\n{{ m['content'][1]['text'] }} "
        "{% else %}ASSISTANT: {% generation %}{{ m['content'][0]['text'] }}{% endgeneration %} {% endif %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    assert _response_wrap(llava_hf) == (" ", "")
    ids = encode_responses(llava_hf, ["circle."])[0]
    assert ids[-1] == processor.tokenizer.eos_token_id  # EOS appended when the template has none
    ids = encode_responses(processor, ["circle."])[0]
    assert ids[-1] == processor.tokenizer.eos_token_id and processor.tokenizer.decode(ids[:-1]) == " circle."


def test_pair_batches_put_chosen_then_rejected_on_shared_images(processor):
    from adpo.data.collate import collate_pairs, double_images, halves, image_keys

    imgs = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 255)]
    b = collate_pairs(processor, imgs, ["a?", "b b b?"], ["no.", "sorry."], ["yes yes yes.", "sure."])
    assert b["input_ids"].shape[0] == 4 and b["pixel_values"].shape[0] == 2
    chosen, rejected = halves(b)
    assert torch.equal(chosen["prompt_mask"], rejected["prompt_mask"])  # same prompts, same positions
    tok = processor.tokenizer
    assert tok.decode(chosen["labels"][1][chosen["labels"][1] != IGNORE]) == " sorry." + tok.eos_token
    assert tok.decode(rejected["labels"][0][rejected["labels"][0] != IGNORE]) == " yes yes yes." + tok.eos_token
    doubled = double_images(image_keys(b))["pixel_values"]
    assert torch.equal(doubled[:2], doubled[2:]) and not torch.equal(doubled[0], doubled[1])
