import pytest
import torch
import torch.nn.functional as F

from adpo.objectives.logps import IGNORE, sequence_logps, sft_loss, token_logps


def test_sequence_logps_sum_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 3, 6]])
    lp = F.log_softmax(logits, -1)
    want0 = lp[0, 1, 3] + lp[0, 2, 4]
    want1 = lp[1, 0, 1] + lp[1, 1, 2] + lp[1, 2, 3] + lp[1, 3, 6]
    assert torch.allclose(sequence_logps(logits, labels), torch.stack([want0, want1]))


def test_sft_loss_reductions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 3, 6]])
    lp, mask = token_logps(logits, labels)
    assert lp.dtype == torch.float32
    tok = sft_loss(logits, labels, "token")
    seq = sft_loss(logits, labels, "sequence")
    assert torch.allclose(tok, -lp.sum() / 6)
    assert torch.allclose(seq, ((-lp[0].sum() / 2) + (-lp[1].sum() / 4)) / 2)


# ---- chunked log-probs (large vocabularies) -----------------------------------------------------------

def _family_batch(family: str):
    from tests.threats.conftest import images

    from adpo.data.collate import collate_pairs, double_images, image_keys
    from adpo.models import synthetic
    from adpo.threats.objectives import model_inputs

    model, processor = synthetic.build(family)
    b = collate_pairs(processor, images(2, (32, 32)), ["what is it?", "how do i fix the car?"],
                      ["a red circle.", "sorry, i cannot."], ["no.", "sure, here is how to fix it."])
    return model, {**model_inputs(b), **double_images(image_keys(b))}, b["labels"]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_chunked_logps_equal_full_logits_in_value_and_gradient(family):
    from adpo.models.families import inspect_model
    from adpo.objectives.logps import model_logps

    model, inputs, labels = _family_batch(family)
    first = inspect_model(model).decoder_path + ".layers.0."
    params = [p for n, p in model.named_parameters() if n.startswith(first)]
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape))
    full, mask = model_logps(model, inputs, labels, 0)
    chunked, mask2 = model_logps(model, inputs, labels, 3)
    handle.remove()
    assert seen[0][1] == labels.shape[1] and seen[1][1] == 1  # the chunked forward kept one position's logits
    assert chunked.dtype == torch.float32 and torch.equal(mask, mask2)
    assert torch.allclose(full, chunked, atol=1e-5)
    g_full = torch.autograd.grad(full.sum(), params)
    g_chunk = torch.autograd.grad(model_logps(model, inputs, labels, 3)[0].sum(), params)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_full, g_chunk))


def test_chunked_logps_refuse_a_model_that_rescales_its_logits():
    from adpo.objectives.logps import model_logps

    model, inputs, labels = _family_batch("llava")
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: out * 3.0)
    with pytest.raises(RuntimeError, match="logps_chunk: 0"):
        model_logps(model, inputs, labels, 4)


def test_auto_chunk_follows_the_vocabulary(tiny_model):
    from adpo.objectives.logps import AUTO_CHUNK, resolve_chunk

    assert resolve_chunk(tiny_model, None) == 0 and resolve_chunk(tiny_model, 8) == 8
    tiny_model.resize_token_embeddings(40_000)
    assert resolve_chunk(tiny_model, None) == AUTO_CHUNK


def test_chunking_needs_logits_to_keep():
    from torch import nn

    from adpo.models.families import UnsupportedModel
    from adpo.objectives.logps import resolve_chunk

    class NoKeep(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 50_000)

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids):
            return self.head(input_ids)

    assert resolve_chunk(NoKeep(), None) == 0 and resolve_chunk(NoKeep(), 0) == 0
    with pytest.raises(UnsupportedModel, match="logits_to_keep"):
        resolve_chunk(NoKeep(), 8)
