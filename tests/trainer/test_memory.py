"""The memory options change memory, not the math: gradient checkpointing (with the attack's latent hooks
firing again during recomputation) and chunked log-probs give the step the plain run gives; bf16 weights
attack and train with fp32 log-probs."""

from __future__ import annotations

import pytest
import torch

from adpo.threats.hooks import decoder_layers
from adpo.trainer.config import RunConfig
from adpo.trainer.loop import setup


def _step(run_args, **train_opts):
    run = RunConfig.from_dict(run_args("at-dpo", utility_data=None,
                                       train={"steps": 1, "batch_size": 2, "threat": "joint", "utility_weight": 0.0,
                                              **train_opts}))
    s = setup(run)
    metrics = s.step(0, log=True)
    grads = {n: p.detach().clone() for n, p in s.policy.trainable()}  # after one update: the LoRA weights
    return s, metrics, grads


@pytest.mark.parametrize("opts", [{"gradient_checkpointing": True}, {"logps_chunk": 5}])
def test_memory_options_leave_the_step_unchanged(run_args, opts):
    _, plain, w_plain = _step(run_args, logps_chunk=0)
    s, other, w_other = _step(run_args, **{"logps_chunk": 0, **opts})
    if "gradient_checkpointing" in opts:
        assert any(getattr(m, "gradient_checkpointing", False) for m in s.policy.model.modules())
    for key in ("loss", "adv/attack_loss", "adv/margin_attacked", "adv/margin_clean"):
        assert other[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
    assert all(torch.allclose(w_plain[n], w_other[n], atol=1e-6) for n in w_plain)
    assert all(not layer._forward_hooks for layer in decoder_layers(s.model))  # attack hooks removed
    assert not s.ctx.core.get_decoder()._forward_hooks  # the chunked log-probs' capture hook too


def test_bf16_weights_attack_and_train_with_fp32_logps(run_args, monkeypatch):
    from adpo.objectives import logps

    seen = []
    original = logps.model_logps

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out[0].dtype)
        return out

    monkeypatch.setattr("adpo.trainer.steps.model_logps", spy)
    monkeypatch.setattr("adpo.threats.objectives.model_logps", spy)
    s, metrics, weights = _step(run_args, model_dtype="bfloat16", logps_chunk=4)
    assert next(p for n, p in s.policy.model.named_parameters() if "lora" not in n).dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in weights.values())  # trainable LoRA weights stay fp32
    assert seen and set(seen) == {torch.float32}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
