"""The cheaper training adversaries at the threat level: warm starts, per-sample early stop, truncated latent."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adpo.threats import ImagePGD, JointPGD, LatentPGD, codec_for, dpo_margin, targeted_nll
from adpo.threats.hooks import decoder_layers

IMAGE = ImagePGD(eps=0.1, step_size=0.02, steps=4, random_start=True)
LATENT = LatentPGD(eps=0.5, relative=True, step_size=0.1, steps=4, layers=(-2,))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_warm_start_is_the_stored_point_projected_and_rows_without_one_start_as_before(llava):
    model, processor, batch = llava
    codec = codec_for(processor)
    threat = ImagePGD(eps=0.1, step_size=0.02, steps=0, random_start=True)
    cold = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=_gen())
    far = cold.x_adv[1] + 0.5  # outside the ball: must come back inside it
    warm = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=_gen(),
                      warm={"image": [None, far, None]})
    assert torch.equal(warm.x_adv[0], cold.x_adv[0]) and torch.equal(warm.x_adv[2], cold.x_adv[2])
    x0 = codec.decode(batch["pixel_values"].float()).clamp(0, 1)
    d = (warm.x_adv[1] - x0[1]).abs().max()
    assert d <= 0.1 + 1e-6 and not torch.equal(warm.x_adv[1], cold.x_adv[1])
    assert warm.x_adv.min() >= 0 and warm.x_adv.max() <= 1


def test_latent_warm_start_fills_the_prompt_positions_within_the_ball(llava):
    model, _, batch = llava
    zero = LatentPGD(eps=0.5, relative=True, steps=0, layers=(-2,))
    li = len(decoder_layers(model)) - 2
    cold = zero.run(model, batch, targeted_nll(batch))
    n = int(cold.prompt_mask[0].sum())
    res = zero.run(model, batch, targeted_nll(batch), warm={f"latent@{li}": [torch.ones(n, 32) * 100, None, None]})
    d = res.latent[li]
    assert (d[0][res.prompt_mask[0]].norm(dim=-1) - res.norms[f"latent_eps@{li}"]).abs().max() < 1e-4
    assert d[0][~res.prompt_mask[0]].abs().sum() == 0 and d[1:].abs().sum() == 0


@pytest.mark.parametrize("threat", [IMAGE, LATENT, JointPGD(IMAGE, LATENT, steps=4)], ids=["image", "latent", "joint"])
def test_early_stop_keeps_won_samples_and_spends_fewer_passes(llava, threat):
    model, processor, batch = llava
    codec = codec_for(processor)
    full = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=_gen())
    start = dataclasses.replace(threat, steps=0).run(model, batch, targeted_nll(batch), codec=codec, generator=_gen())
    cut = float(start.loss.min()) + 1e-4  # the easiest sample has won at its start point: it leaves at once
    won = int(start.loss.argmin())
    stopped = threat.run(model, batch, targeted_nll(batch), codec=codec, generator=_gen(), stop_below=cut)
    assert stopped.passes < full.passes == threat.steps
    assert stopped.loss[won] <= cut
    if stopped.x_adv is not None:
        torch.testing.assert_close(stopped.x_adv[won], start.x_adv[won])  # kept the iterate that won
        x0 = codec.decode(batch["pixel_values"].float()).clamp(0, 1)
        assert (stopped.x_adv - x0).abs().max() <= 0.1 + 1e-6
    for li, d in (stopped.latent or {}).items():
        assert (d.norm(dim=-1) <= stopped.norms[f"latent_eps@{li}"] + 1e-4).all()
    # the samples that never won ran every step, on the same iterates as without early stop
    for i in (i for i in range(3) if stopped.loss[i] > cut):
        torch.testing.assert_close(stopped.loss[i], full.loss[i], rtol=1e-4, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_early_stop_needs_a_stateless_rule(llava):
    model, processor, batch = llava
    with pytest.raises(ValueError, match="stateless"):
        ImagePGD(eps=0.1, steps=3, optimizer="adam").run(model, batch, targeted_nll(batch),
                                                           codec=codec_for(processor), stop_below=0.0)


@pytest.mark.parametrize("objective", ["nll", "margin"])
def test_truncated_latent_attack_equals_the_full_one_and_reaches_only_the_delta(llava, objective):
    model, _, batch = llava
    n = batch["input_ids"].shape[0]
    obj = targeted_nll(batch) if objective == "nll" else dpo_margin(batch, {**batch, "labels": batch["labels"]})
    full = LATENT.run(model, batch, obj)
    cut = LatentPGD(**{**LATENT.to_dict(), "truncate": True}).run(model, batch, obj)
    torch.testing.assert_close(cut.loss, full.loss, rtol=1e-5, atol=1e-5)
    for li in full.latent:
        torch.testing.assert_close(cut.latent[li], full.latent[li], rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())
    assert all(type(m).__name__ not in ("_Skip", "_Replay") for m in decoder_layers(model))  # layers restored
    assert cut.latent[next(iter(cut.latent))].shape[0] == n


def test_truncated_latent_attack_runs_the_layers_below_once(llava):
    model, _, batch = llava
    layers = decoder_layers(model)
    calls = [0] * len(layers)
    hooks = [layer.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(layers)]
    try:
        LatentPGD(**{**LATENT.to_dict(), "truncate": True}).run(model, batch, targeted_nll(batch))
    finally:
        for h in hooks:
            h.remove()
    lowest = len(layers) - 2
    # the clean pass of init runs every layer once; the 4 steps + final evaluation re-run only those above
    assert calls[:lowest + 1] == [1] * (lowest + 1)
    assert calls[lowest + 1:] == [1 + LATENT.steps + 1] * (len(layers) - lowest - 1)


def test_joint_refuses_a_truncated_latent_part():
    with pytest.raises(ValueError, match="truncate"):
        JointPGD(IMAGE, LatentPGD(truncate=True))
