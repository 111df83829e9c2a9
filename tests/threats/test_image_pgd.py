import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adpo.threats.image import ImagePGD, project
from adpo.threats.protocol import pgd


@settings(max_examples=50, deadline=None)
@given(eps=st.floats(1 / 255, 1.5), norm=st.sampled_from(["linf", "l2"]), seed=st.integers(0, 1000))
def test_projection_lies_in_ball_and_box(eps, norm, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(3, 3, 8, 8, generator=g)
    x = x0 + 3 * torch.randn(3, 3, 8, 8, generator=g)
    p = project(x, x0, eps, norm)
    assert p.min() >= 0 and p.max() <= 1
    d = (p - x0).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= min(eps, 1) + 1e-6
    else:
        assert (d.norm(dim=1) <= eps + 1e-5).all()


def _quadratic(target):
    return lambda x: ((x - target) ** 2).flatten(1).sum(1)


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(2 / 255, 0.3), steps=st.integers(1, 12), norm=st.sampled_from(["linf", "l2"]),
       rs=st.booleans())
def test_pgd_result_in_ball_and_lowers_loss(eps, steps, norm, rs):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 6, 6, generator=g)
    target = torch.rand(2, 3, 6, 6, generator=g)
    loss = _quadratic(target)
    res = pgd(loss, x0, ImagePGD(eps=eps, step_size=eps / 4, steps=steps, random_start=rs, norm=norm,
                                 keep_best=True))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    bound = res.norms["image_linf"] if norm == "linf" else res.norms["image_l2"]
    assert (bound <= eps + 1e-5).all()
    assert (res.loss <= loss(x0) + 1e-6).all()  # keep_best never returns worse than the start


def test_pgd_beats_random_noise_of_same_size():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g)
    target = torch.rand(4, 3, 8, 8, generator=g)
    loss = _quadratic(target)
    eps = 8 / 255
    res = pgd(loss, x0, ImagePGD(eps=eps, step_size=1 / 255, steps=20))
    noise = project(x0 + eps * torch.sign(torch.randn(x0.shape, generator=g)), x0, eps)
    assert (res.loss < loss(noise)).all()


def test_unconstrained_mode_reaches_far_targets():
    x0 = torch.full((1, 3, 4, 4), 0.5)
    target = torch.zeros(1, 3, 4, 4)
    res = pgd(_quadratic(target), x0, ImagePGD(eps=1.0, step_size=0.05, steps=20, random_start=False))
    assert res.x_adv.max() < 1e-6


def test_pgd_works_under_no_grad_and_leaves_no_param_grad():
    lin = torch.nn.Linear(12, 1)
    x0 = torch.rand(2, 12)
    with torch.no_grad():
        res = pgd(lambda x: lin(x).squeeze(-1), x0, ImagePGD(eps=0.1, step_size=0.02, steps=3))
    assert lin.weight.grad is None
    assert res.x_adv.requires_grad is False


def test_nan_gradients_are_ignored():
    x0 = torch.full((1, 4), 0.5)
    res = pgd(lambda x: (x * float("nan")).sum(1), x0, ImagePGD(eps=0.1, step_size=0.05, steps=3,
                                                                 random_start=False))
    assert torch.equal(res.x_adv, x0)
