"""LoRA policy and reference on one base: what trains, what stays frozen, and flag hygiene."""

from __future__ import annotations

import pytest
import torch

from adpo.data.collate import collate_pairs, double_images, image_keys
from adpo.models.adapters import LoraSettings, build_policy, save_trained
from adpo.objectives.logps import sequence_logps


@pytest.fixture()
def pair_batch(processor, world):
    from PIL import Image

    rng = world.rng("adapters")
    samples = [world.harm_sample("train", rng, 0.0) for _ in range(2)]
    return collate_pairs(processor, [Image.fromarray(world.render(s, rng)) for s in samples],
                         [s.prompt for s in samples], [s.meta["refusal"] for s in samples],
                         [s.meta["compliance"] for s in samples])


def logps(model, batch):
    kw = {k: batch[k] for k in ("input_ids", "attention_mask")}
    return sequence_logps(model(**kw, **double_images(image_keys(batch))).logits, batch["labels"])


def step(policy, batch):
    opt = torch.optim.SGD([p for _, p in policy.trainable()], lr=0.5)
    (-logps(policy.model, batch).sum()).backward()
    opt.step()


def test_lora_targets_only_the_language_model(tiny_model):
    policy = build_policy(tiny_model, LoraSettings(), reference="init")
    names = [n for n, _ in policy.trainable()]
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in names)
    assert policy.reference == "disabled-adapter"


def test_bad_target_regex_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="not found in the base model"):
        build_policy(tiny_model, LoraSettings(target=r".*no_such_module"))


def test_reference_adapter_is_bit_identical_after_training_and_policy_starts_from_it(
        tiny_model, processor, pair_batch, tmp_path):
    import copy

    first = build_policy(copy.deepcopy(tiny_model), LoraSettings())
    step(first, pair_batch)  # a trained "AT" adapter to start from
    save_trained(first, processor, tmp_path)
    policy = build_policy(tiny_model, LoraSettings(), init=tmp_path / "adapter", reference="init")
    assert policy.reference == "adapter"
    with torch.no_grad(), policy.reference_model() as ref:
        ref_before = logps(ref, pair_batch)
    with torch.no_grad():
        assert torch.allclose(logps(policy.model, pair_batch), ref_before)  # policy == reference at step 0
    ref_weights = {n: p.detach().clone() for n, p in policy.model.named_parameters() if ".ref." in n}
    base_weights = {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_" not in n}
    flags = {n: p.requires_grad for n, p in policy.model.named_parameters()}
    step(policy, pair_batch)
    for n, p in policy.model.named_parameters():
        if n in ref_weights:
            assert torch.equal(p, ref_weights[n]), n
        if n in base_weights:
            assert torch.equal(p, base_weights[n]), n
    assert {n: p.requires_grad for n, p in policy.model.named_parameters()} == flags
    assert ref_weights and not any(flags[n] for n in ref_weights)
    with torch.no_grad(), policy.reference_model() as ref:
        assert torch.equal(logps(ref, pair_batch), ref_before)
    with torch.no_grad():
        assert not torch.allclose(logps(policy.model, pair_batch), ref_before)
    assert {n: p.requires_grad for n, p in policy.model.named_parameters()} == flags  # restored by the context


def test_saved_adapter_loads_with_plain_peft(tiny_model, processor, pair_batch, tmp_path):
    import copy

    from peft import PeftModel

    policy = build_policy(copy.deepcopy(tiny_model), LoraSettings())
    step(policy, pair_batch)
    path = save_trained(policy, processor, tmp_path)
    assert (path / "adapter_model.safetensors").exists() and (path / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(tiny_model, path).eval()
    with torch.no_grad():
        assert torch.allclose(logps(loaded, pair_batch), logps(policy.model.eval(), pair_batch), atol=1e-6)


def test_full_finetuning_has_a_frozen_copy_as_reference(tiny_model, pair_batch):
    policy = build_policy(tiny_model, LoraSettings(enabled=False), reference="init")
    assert policy.reference == "copy" and policy.ref_copy is not tiny_model
    assert not any(p.requires_grad for p in policy.ref_copy.parameters())
    assert not any(p.requires_grad for n, p in tiny_model.named_parameters() if "vision_tower" in n)
    with torch.no_grad():
        before = logps(policy.ref_copy, pair_batch)
    step(policy, pair_batch)
    with torch.no_grad(), policy.reference_model() as ref:
        assert torch.equal(logps(ref, pair_batch), before)
