"""Answers tokenised with the text before them (issue 16): on byte-level BPE tokenizers and on a SentencePiece
Llama tokenizer built offline, a collated row's ids are those of its whole text, for single-turn pairs and
multi-turn SFT rows, under the model's chat template and LLaMA-Factory's ``llava`` template."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from adpo.data.collate import IGNORE, collate_pair_rows, collate_rows, prompt_text, row_pieces
from adpo.data.formats import PairRow, SFTRow
from adpo.data.templates import VICUNA_SYSTEM, use_template
from adpo.models import synthetic

PAIR = PairRow(None, "What is shown in the image?", "Sorry, I can't do that.", "Sure, here's how to do it", "p")
SFT = SFTRow(None, "How many people are visible?", "There are 2 people.", "s",
             history=(("What is shown in the image?", "A black bear sniffs at a tree."),))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the dev extra installs sentencepiece (and protobuf)")
    return synthetic.sentencepiece_tokenizer(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def bpe_llava():
    return synthetic.build_processor("llava")


@pytest.fixture(scope="module", params=["bpe-llava", "bpe-qwen", "sentencepiece-llava"])
def processor(request):
    if request.param == "bpe-qwen":
        return synthetic.build_processor("qwen2_vl", synthetic.TINY_QWEN)
    if request.param == "bpe-llava":
        return request.getfixturevalue("bpe_llava")
    return synthetic.build_processor("llava", tokenizer=request.getfixturevalue("sentencepiece"))


def _joined(processor, row, answer_field=None):
    """The ids of the row's whole text (prompt + every piece), tokenised in one go."""
    pieces = row_pieces(processor, row, getattr(row, answer_field) if answer_field else None)
    tok = processor.tokenizer
    prompt = prompt_text(processor, row)
    ids = tok(prompt + "".join(p for p, _ in pieces), add_special_tokens=False)["input_ids"]
    return ids[len(tok(prompt, add_special_tokens=False)["input_ids"]):], pieces


def _tail(batch, i):
    """(continuation ids, labels) of row i: everything after the prompt, padding dropped."""
    keep = batch["attention_mask"][i].bool() & ~batch["prompt_mask"][i]
    return batch["input_ids"][i][keep].tolist(), batch["labels"][i][keep].tolist()


@pytest.mark.parametrize("template", ["model", "llava"])
def test_answer_ids_are_those_of_the_joined_text(processor, template):
    import copy

    processor = use_template(copy.deepcopy(processor), template)
    image = Image.new("RGB", (40, 30), (90, 120, 30))
    tok = processor.tokenizer
    pairs = collate_pair_rows(processor, [image], [PAIR])
    for i, field in enumerate(("chosen", "rejected")):
        ids, labels = _tail(pairs, i)
        joined, _ = _joined(processor, PAIR, field)
        assert ids == joined and labels == ids
        assert tok.decode(ids, skip_special_tokens=True).strip() == getattr(PAIR, field)
    sft = collate_rows(processor, [image], [SFT])
    ids, labels = _tail(sft, 0)
    joined, pieces = _joined(processor, SFT)
    assert ids == joined
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE]  # both answers, not the user turn between
    expected = "".join(t for t, is_trained in pieces if is_trained).replace(tok.eos_token, "")
    assert tok.decode(trained, skip_special_tokens=True).split() == expected.split()
    assert SFT.history[0][1] in expected and SFT.response in expected
    assert [lab for lab in labels if lab != IGNORE] == trained and IGNORE in labels
    assert sum(trained_piece for _, trained_piece in pieces) == 2


def test_sentencepiece_answers_differ_when_tokenised_apart(sentencepiece):
    """The failure the joined tokenisation avoids: tokenised alone, the text after an end-of-turn token gets
    the dummy prefix (``▁``) the model never sees mid-conversation."""
    tok = sentencepiece
    alone = tok("USER: hi", add_special_tokens=False)["input_ids"]
    joined = tok("</s>USER: hi", add_special_tokens=False)["input_ids"][1:]
    assert tok.convert_ids_to_tokens(alone)[0].startswith("▁") and alone != joined


def test_llava_template_is_llamafactory_vicuna_format(bpe_llava):
    import copy

    processor = use_template(copy.deepcopy(bpe_llava), "llava")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A."}]},
            {"role": "user", "content": [{"type": "text", "text": "more?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == VICUNA_SYSTEM + "USER: <image>Q? ASSISTANT: A.</s>USER: more? ASSISTANT:"
    batch = collate_pair_rows(processor, [Image.new("RGB", (8, 8))], [PAIR])
    assert torch.equal(batch["labels"][0][batch["labels"][0] != IGNORE][-1:],
                       torch.tensor([processor.tokenizer.eos_token_id]))
