import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adpo.threats import JointPGD, LatentPGD, UniversalImagePGD, attack_mode, dpo_margin, targeted_nll
from adpo.threats.codecs import codec_for
from adpo.threats.hooks import decoder_layers
from adpo.threats.image import ImagePGD, project


def _clean_loss(model, batch):
    with torch.no_grad():
        return targeted_nll(batch)(model, {})


def _snapshot(model):
    return [(p.requires_grad, p.grad) for p in model.parameters()], model.training


def test_image_pgd_lowers_target_nll_and_beats_noise(llava):
    model, proc, batch = llava
    codec = codec_for(proc)
    eps = 16 / 255
    res = ImagePGD(eps=eps, step_size=2 / 255, steps=10).run(model, batch, targeted_nll(batch), codec=codec,
                                                              generator=torch.Generator().manual_seed(0))
    clean = _clean_loss(model, batch)
    assert (res.loss < clean).all()
    x0 = codec.decode(batch["pixel_values"])
    noise = project(x0 + eps * torch.sign(torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))), x0, eps)
    with torch.no_grad():
        noisy = targeted_nll(batch)(model, {"pixel_values": codec.encode(noise)})
    assert (res.loss < noisy).all()
    assert (res.norms["image_linf"] <= eps + 1e-6).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(eps=st.floats(0.05, 2.0), optimizer=st.sampled_from(["sign", "adam"]), relative=st.booleans())
def test_latent_perturbation_stays_in_per_token_ball(llava, eps, optimizer, relative):
    model, _, batch = llava
    res = LatentPGD(eps=eps, step_size=eps / 3, steps=3, layers=(0, -1), optimizer=optimizer,
                    relative=relative).run(model, batch, targeted_nll(batch))
    for li, d in res.latent.items():
        bound = res.norms[f"latent_eps@{li}"]
        assert (d.norm(dim=-1) <= bound * (1 + 1e-5)).all()
        assert res.norms[f"latent_rel@{li}"] >= 0
    assert set(res.latent) == {0, len(decoder_layers(model)) - 1}


def test_latent_mask_is_prompt_only_and_lowers_loss(llava):
    model, _, batch = llava
    res = LatentPGD(eps=2.0, step_size=0.5, steps=8, layers=(0,)).run(model, batch, targeted_nll(batch))
    mask = batch["prompt_mask"] & batch["attention_mask"].bool()
    width = res.prompt_mask.shape[1]
    assert torch.equal(res.prompt_mask, mask[:, :width])
    assert not (res.prompt_mask & ~batch["attention_mask"][:, :width].bool()).any()  # never padding
    assert (res.loss < _clean_loss(model, batch)).all()


def test_joint_threat_bounds_both(llava):
    model, proc, batch = llava
    threat = JointPGD(ImagePGD(eps=8 / 255, step_size=2 / 255), LatentPGD(eps=0.5, step_size=0.2, layers=(1,)),
                      steps=5)
    res = threat.run(model, batch, targeted_nll(batch), codec=codec_for(proc))
    assert (res.norms["image_linf"] <= 8 / 255 + 1e-6).all()
    assert (res.latent[1].norm(dim=-1) <= 0.5 + 1e-5).all()
    assert (res.loss < _clean_loss(model, batch)).all()
    with res.applied(model) as overrides:  # the found perturbation reproduces the reported loss
        with torch.no_grad():
            again = targeted_nll(batch)(model, overrides)
    assert torch.allclose(again, res.loss, atol=1e-4)


def test_hygiene_hooks_gone_no_param_grads_flags_and_mode_restored(llava):
    model, proc, batch = llava
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad_("language_model" in n)
    before_flags = [p.requires_grad for p in model.parameters()]
    clean_logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "prompt_mask")}).logits.detach()
    with torch.no_grad():  # works under a caller's no_grad
        JointPGD(ImagePGD(eps=0.1, step_size=0.05), LatentPGD(eps=1.0, layers=(0, 1)), steps=3).run(
            model, batch, targeted_nll(batch), codec=codec_for(proc))
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == before_flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not layer._forward_hooks for layer in decoder_layers(model))
    after = model(**{k: v for k, v in batch.items() if k not in ("labels", "prompt_mask")}).logits.detach()
    assert torch.equal(after, clean_logits)


def test_failing_forward_leaves_the_model_clean(llava):
    model, _, batch = llava
    flags = [p.requires_grad for p in model.parameters()]
    calls = {"n": 0}
    inner = targeted_nll(batch)

    def flaky(m, overrides):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return inner(m, overrides)

    with pytest.raises(RuntimeError, match="boom"):
        LatentPGD(eps=1.0, steps=5, layers=(0,)).run(model, batch, flaky)
    assert all(not layer._forward_hooks for layer in decoder_layers(model))
    assert [p.requires_grad for p in model.parameters()] == flags


def test_deterministic_given_seed(llava):
    model, proc, batch = llava
    runs = [ImagePGD(eps=8 / 255, step_size=1 / 255, steps=4).run(
        model, batch, targeted_nll(batch), codec=codec_for(proc), generator=torch.Generator().manual_seed(3))
        for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)


def test_dpo_margin_objective_is_raised_by_the_attack(llava):
    model, proc, batch = llava
    rejected = {**batch, "labels": batch["labels"]}
    chosen_labels = batch["labels"].clone()
    chosen = {**batch, "labels": chosen_labels}
    objective = dpo_margin(chosen, rejected)
    with torch.no_grad():
        assert torch.allclose(objective(model, {}), torch.zeros(3), atol=1e-5)  # same answer: zero margin
    res = ImagePGD(eps=8 / 255, steps=2).run(model, batch, objective, codec=codec_for(proc))
    assert res.loss.shape == (3,)


def test_peft_wrapped_model_exposes_decoder_layers(llava):
    from peft import LoraConfig, get_peft_model

    model, _, batch = llava
    pm = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    res = LatentPGD(eps=1.0, steps=2, layers=(0,)).run(pm, batch, targeted_nll(batch))
    assert 0 in res.latent
    assert all(not layer._forward_hooks for layer in decoder_layers(pm))


def test_llava_next_image_attack(llava_next):
    model, proc, batch = llava_next
    codec = codec_for(proc)
    res = ImagePGD(eps=16 / 255, step_size=4 / 255, steps=5).run(model, batch, targeted_nll(batch), codec=codec)
    assert res.pixel_values.shape == batch["pixel_values"].shape  # 5-D crops
    assert (res.norms["image_linf"] <= 16 / 255 + 1e-6).all()
    assert (res.loss < _clean_loss(model, batch)).all()


def test_attack_mode_restores_on_error(llava):
    model, _, _ = llava
    model.train()
    with pytest.raises(ValueError):
        with attack_mode(model):
            assert not any(p.requires_grad for p in model.parameters())
            model.eval()
            raise ValueError
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_universal_delta_is_shared_and_bounded(llava):
    model, proc, batch = llava
    eps = 16 / 255
    res = UniversalImagePGD(eps=eps, step_size=2 / 255, steps=6).run(
        model, batch, targeted_nll(batch), codec=codec_for(proc), generator=torch.Generator().manual_seed(0))
    x0 = codec_for(proc).decode(batch["pixel_values"]).clamp(0, 1)
    delta = res.x_adv - x0
    assert (delta.abs() <= eps + 1e-6).all()
    inside = (res.x_adv > 1e-6) & (res.x_adv < 1 - 1e-6)  # where no [0,1] clipping happened
    ref = delta[0].expand_as(delta)
    assert torch.allclose(delta[inside & inside[0:1].expand_as(inside)], ref[inside & inside[0:1].expand_as(inside)],
                          atol=1e-6)
    assert res.loss.mean() < _clean_loss(model, batch).mean()


def test_qwen2vl_image_and_latent_attack(qwen2vl):
    model, ip, batch = qwen2vl
    codec = codec_for(ip)
    threat = JointPGD(ImagePGD(eps=16 / 255, step_size=4 / 255), LatentPGD(eps=0.5, layers=(0,), relative=True),
                      steps=4)
    res = threat.run(model, batch, targeted_nll(batch), codec=codec)
    assert res.pixel_values.shape == batch["pixel_values"].shape  # patchified rows, processor layout
    assert (res.norms["image_linf"] <= 16 / 255 + 1e-6).all()
    assert (res.loss < _clean_loss(model, batch)).all()
    assert all(not layer._forward_hooks for layer in decoder_layers(model))


def test_ddp_wrapped_model(llava, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, proc, batch = llava
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        res = JointPGD(ImagePGD(eps=8 / 255), LatentPGD(eps=0.5, layers=(0,)), steps=2).run(
            ddp, batch, targeted_nll(batch), codec=codec_for(proc))
        assert 0 in res.latent and all(not layer._forward_hooks for layer in decoder_layers(ddp))
        assert all(p.grad is None for p in model.parameters())
    finally:
        dist.destroy_process_group()
