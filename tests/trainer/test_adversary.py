"""The cheaper training adversaries in the loop: free/replay training, persistent perturbations, early stop."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adpo.data.collate import image_keys
from adpo.threats.codecs import codec_for
from adpo.threats.protocol import AttackResult
from adpo.trainer import loop, steps
from adpo.trainer.checkpoint import ADVERSARY, read_state
from adpo.trainer.config import RunConfig
from adpo.trainer.steps import dpo_step
from adpo.trainer.tracking import read_metrics
from adpo.utils.config import ConfigError


def test_free_step_gives_the_policy_its_gradient_and_the_perturbation_the_rest(run_args, monkeypatch):
    s = loop.setup(RunConfig.from_dict(run_args("at-dpo", train={"free_replays": 2})))
    adversary, ctx = s.ctx.adversary, s.ctx
    batch = loop._to(s.stream.batch(0), s.acc.device)
    adversary.begin(0, s.stream.indices(0))
    loss, _ = dpo_step(ctx, batch, None, log=False)
    _, _, leaves, _ = adversary._pending
    (leaf,) = leaves
    loss.backward()
    free = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0  # the input gradient came with the backward
    assert free and all(p.requires_grad for n, p in s.model.named_parameters() if n in free)  # trainable only
    x_before = leaf.detach().clone()
    s.optimizer.zero_grad(set_to_none=True)
    # the same loss with the perturbation held fixed: the policy's gradient is unchanged
    fixed = AttackResult(loss=torch.zeros(0), settings={},
                         pixel_values=codec_for(s.processor).encode(x_before).detach())
    with monkeypatch.context() as m:
        m.setattr(steps, "attack", lambda _ctx, _batch: fixed)
        loss2, _ = dpo_step(ctx, batch, None, log=False)
    loss2.backward()
    assert free.keys() == {n for n, p in s.model.named_parameters() if p.grad is not None}
    for n, p in s.model.named_parameters():
        if n in free:
            torch.testing.assert_close(p.grad, free[n])
    # one ascent step of the threat's rule, inside the ball, kept for the batch's replay
    adversary.after_backward()
    x0 = codec_for(s.processor).decode(image_keys(batch)["pixel_values"].float()).clamp(0, 1)
    x1 = torch.stack([adversary.store["image"][r] for r in adversary.rows])
    eps, step = s.run.image.eps, s.run.image.step_size
    assert (x1 - x0).abs().max() <= eps + 1e-6 and x1.min() >= 0 and x1.max() <= 1
    moved = (x1 - x_before).abs()
    assert moved.max() <= step + 1e-6 and moved.max() > 0
    adversary.begin(1, s.stream.indices(0))
    assert all(torch.equal(w, adversary.store["image"][r]) for w, r in zip(adversary.warm()["image"], adversary.rows))


OPTS = {"train": {"steps": 6, "save_every": 3, "threat": "joint"}, "image": {"random_start": True}}


@pytest.mark.parametrize("options", [{"free_replays": 2, "persistent_perturbations": True},
                                     {"persistent_perturbations": True, "attack_stop_below": 135.0}],
                         ids=["free+persistent", "persistent+early-stop"])
def test_resume_is_bit_identical_with_the_adversary_state_saved(run_args, tmp_path, killed_after, options):
    opts = {**OPTS, "train": {**OPTS["train"], **options}}
    loop.train(RunConfig.from_dict(run_args("at-dpo", out="full", **opts)), progress=False)
    part = RunConfig.from_dict(run_args("at-dpo", out="part", **opts))
    killed_after(part, 3)
    saved = read_state(tmp_path / "part" / "checkpoints" / "step-000003" / ADVERSARY)  # plain tensors
    assert "image" in saved[0] and any(k.startswith("latent@") for k in saved[0])
    assert all(len(v) for v in saved[0].values())
    loop.train(part, resume=True, progress=False)
    full_w = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    part_w = load_file(str(tmp_path / "part" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time/step_s"} for r in rows]  # noqa: E731
    full_m = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert strip(read_metrics(tmp_path / "part" / "metrics.jsonl")) == strip(full_m)
    passes = [r["adv/passes"] for r in full_m]
    if "free_replays" in options:
        assert passes == [0.0] * 6 and "adv/attack_loss" not in full_m[0]
        assert [r["epoch"] for r in full_m][:2] == [full_m[0]["epoch"]] * 2  # replays: the same batch twice
    else:
        assert max(passes) <= 2 and min(passes) < 2 and sum(passes) > 0  # early stop: fewer than K = 2 passes


def test_persistent_warm_start_reaches_the_next_epoch(run_args):
    s = loop.setup(RunConfig.from_dict(run_args("at-dpo", train={"persistent_perturbations": True})))
    s.step(0, log=False)
    adversary = s.ctx.adversary
    rows = s.stream.indices(0)
    assert set(rows) <= set(adversary.store["image"])
    adversary.begin(99, rows)  # the same rows, any later step
    warm = adversary.warm()
    assert all(torch.equal(w, adversary.store["image"][r]) for w, r in zip(warm["image"], rows))


@pytest.mark.parametrize("opts", [{"train": {"free_replays": 2, "attack_stop_below": 1.0}},
                                  {"train": {"threat": "joint"}, "latent": {"truncate": True}}])
def test_refused_combinations(run_args, opts):
    with pytest.raises((ConfigError, ValueError)):
        RunConfig.from_dict(run_args("adpo", reference="x", **opts))


def test_options_need_an_adversarial_method(run_args):
    with pytest.raises(ConfigError, match="trains without one"):
        RunConfig.from_dict(run_args("dpo", train={"persistent_perturbations": True}))
