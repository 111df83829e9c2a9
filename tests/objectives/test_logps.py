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
