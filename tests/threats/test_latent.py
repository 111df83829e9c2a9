import torch
from torch import nn

from adpo.models.families import unwrap
from adpo.threats.hooks import _add
from adpo.threats.latent import project_tokens


def test_add_handles_tensor_and_tuple_outputs():
    hidden = torch.zeros(2, 5, 3)
    delta = torch.ones(2, 2, 3)
    mask = torch.tensor([[True, False], [True, True]])
    out_t = _add(hidden, delta, mask)
    out_tuple = _add((hidden, "cache"), delta, mask)
    assert isinstance(out_tuple, tuple) and out_tuple[1] == "cache"
    assert torch.equal(out_t, out_tuple[0])
    assert out_t[0, 0].sum() == 3 and out_t[0, 1].sum() == 0 and out_t[1, :2].sum() == 6
    assert out_t[:, 2:].abs().sum() == 0  # nothing beyond the prompt positions


def test_cached_decoding_steps_are_left_alone():
    hidden = torch.zeros(2, 1, 3)
    assert _add(hidden, torch.ones(2, 4, 3), torch.ones(2, 4, dtype=torch.bool)) is hidden


def test_project_tokens():
    d = torch.randn(4, 7, 16) * 10
    p = project_tokens(d, 2.0)
    assert (p.norm(dim=-1) <= 2.0 + 1e-5).all()
    small = torch.full((1, 1, 4), 0.1)
    assert torch.equal(project_tokens(small, 2.0), small)


def test_unwrap_ddp_like_wrappers():
    inner = nn.Linear(2, 2)

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert unwrap(Wrapper(Wrapper(inner))) is inner
