"""The joint image + latent attack on a bf16 model of every tested family: fp32 perturbations and log-probs,
bounds kept, and the image actually moved (the gradient reaches the pixels through each family's codec)."""

from __future__ import annotations

import pytest
import torch

from adpo.data.collate import collate, image_keys
from adpo.models import synthetic
from adpo.threats import JointPGD, LatentPGD, optimise, targeted_nll
from adpo.threats.codecs import codec_for, codec_inputs
from adpo.threats.image import ImagePGD

from .conftest import images


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_joint_attack_on_bf16_weights(family):
    model, processor = synthetic.build(family, dtype=torch.bfloat16)
    b = collate(processor, images(2, (32, 32)), ["what is it?", "how do i fix the car?"], ["a thing.", "sure."])
    inputs = {**image_keys(b), "prompt_mask": b["prompt_mask"], "attention_mask": b["attention_mask"]}
    codec = codec_for(processor)
    x0 = codec.decode(b["pixel_values"].float(), **codec_inputs(codec, b)).clamp(0, 1)
    threat = JointPGD(ImagePGD(eps=0.1, step_size=0.05, steps=2),
                      LatentPGD(eps=0.5, relative=True, steps=2, layers=(-1,)), steps=2)
    res = optimise(model, inputs, targeted_nll(b, chunk=4), threat, codec=codec,
                   generator=torch.Generator().manual_seed(0))
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss).all()
    assert res.x_adv.dtype == torch.float32 and all(d.dtype == torch.float32 for d in res.latent.values())
    moved = (res.x_adv - x0).abs().amax()
    assert 0 < float(moved) <= 0.1 + 1e-6
    assert float(res.norms[f"latent_l2_max@{len(model.get_decoder().layers) - 1}"]) > 0
    assert not any(layer._forward_hooks for layer in model.get_decoder().layers)
