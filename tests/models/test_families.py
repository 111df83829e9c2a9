"""Every tested family (a tiny random model with the family's real classes and processor, built offline)
runs the organism's code path: introspection, one AT and one ADPO step under the joint image + latent
threat, adapter save -> load, one evaluation attack. Unsupported models fail at load with what they lack."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from adpo.eval.config import EvalConfig
from adpo.eval.runner import ModelSpec, evaluate_model, load_model
from adpo.models import synthetic
from adpo.models.adapters import LoraSettings, build_policy, load_base
from adpo.models.families import UnsupportedModel, inspect_model
from adpo.trainer.config import RunConfig
from adpo.trainer.loop import train


@pytest.fixture(scope="module", params=synthetic.FAMILIES)
def family_dir(request, tmp_path_factory):
    model, processor = synthetic.build(request.param)
    return request.param, synthetic.save(model, processor, tmp_path_factory.mktemp(request.param) / "model")


def test_introspection_is_read_from_the_model(family_dir):
    family, path = family_dir
    model, processor = load_base(path)
    info = inspect_model(model, processor)
    text = model.config.get_text_config()
    assert info.family != "untested" and info.model_type == model.config.model_type
    assert info.n_layers == text.num_hidden_layers and info.hidden_size == text.hidden_size
    assert model.get_submodule(info.decoder_path) is model.get_decoder()
    assert info.vocab_size == model.get_output_embeddings().out_features


def test_lora_reaches_every_decoder_linear_and_nothing_else(family_dir):
    _, path = family_dir
    base, _ = load_base(path)
    info = inspect_model(base)
    linears = {n for n, m in base.named_modules() if isinstance(m, nn.Linear)
               and n.startswith(info.decoder_path + ".layers.")}
    policy = build_policy(base, LoraSettings(r=2, alpha=4))
    wrapped = {n.removeprefix("base_model.model.") for n, m in policy.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == linears and linears
    trainable = [n for n, _ in policy.trainable()]
    assert trainable and all("lora_" in n and info.decoder_path in n for n in trainable)
    assert inspect_model(policy.model) == info  # the facts survive peft's wrapping


def _run(family: str, path, export_dir, out, method: str, **extra) -> dict:
    raw = {"method": method, "model": str(path), "data": str(export_dir / "preference_train.jsonl"),
           "utility_data": str(export_dir / "sft_train.jsonl"), "out": str(out),
           "train": {"steps": 1, "batch_size": 2, "utility_batch_size": 2, "lr": 1e-2, "threat": "joint",
                     "warmup_ratio": 0.0, "scheduler": "constant", "logps_chunk": 7},
           "lora": {"r": 2, "alpha": 4},
           "image": {"steps": 2, "eps": 0.1, "step_size": 0.05},
           "latent": {"steps": 2, "eps": 0.5, "relative": True, "step_size": 0.2, "optimizer": "sign",
                      "layers": [0, -1]}, **extra}
    return train(RunConfig.from_dict(raw), progress=False)


def test_adpo_step_adapter_round_trip_and_attack(family_dir, export_dir, tmp_path):
    family, path = family_dir
    at = _run(family, path, export_dir, tmp_path / "at", "at")
    adpo = _run(family, path, export_dir, tmp_path / "adpo", "adpo", reference=str(tmp_path / "at"))
    metrics = [json.loads(x) for x in (tmp_path / "adpo" / "metrics.jsonl").read_text().splitlines()]
    assert at["steps"] == adpo["steps"] == 1 and all(torch.isfinite(torch.tensor(v)) for v in metrics[0].values())
    assert any(k.startswith("adv/latent_eps@") for k in metrics[0]) and "adv/image_linf" in metrics[0]

    # save -> load: the adapter reloads onto the base; merged (eval) and unmerged scores agree, and differ
    # from the base model (the steps changed the LoRA weights)
    from peft import PeftModel

    from adpo.data.collate import collate, image_keys
    from adpo.data.formats import load_rows, open_image
    from adpo.threats.objectives import model_inputs

    base, processor = load_base(path)
    rows = load_rows(str(export_dir / "sft_train.jsonl"), "sft")[:2]
    batch = collate(processor, [open_image(r.image) for r in rows], [r.prompt for r in rows],
                    [r.response for r in rows])
    kw = {**model_inputs(batch), **image_keys(batch)}
    with torch.no_grad():
        plain = base(**kw).logits
        loaded = PeftModel.from_pretrained(base, str(tmp_path / "adpo" / "adapter")).eval()
        unmerged = loaded(**kw).logits
        merged, _ = load_model(ModelSpec("adpo", str(path), str(tmp_path / "adpo")))
        merged_logits = merged(**kw).logits
    assert torch.allclose(unmerged, merged_logits, atol=1e-4)
    assert not torch.allclose(unmerged, plain, atol=1e-6)

    # one white-box evaluation attack (image PGD at 16/255 and a latent attack) through the runner
    cfg = EvalConfig.from_dict({
        "tasks": ["pgd-image", "latent"], "limit": 2, "batch_size": 2, "max_new_tokens": 4, "check_every": 1,
        "judges": ["gcg13"], "logps_chunk": 5,
        "data": {"harmful": str(export_dir / "harmful_test.jsonl")},
        "pgd_image": {"eps": ["16/255"], "steps": 2, "blank": False}, "latent": {"eps": [0.5], "steps": 2}})
    res = evaluate_model(ModelSpec("adpo", str(path), str(tmp_path / "adpo")), cfg, tmp_path / "eval",
                         progress=False, log=lambda s: None)
    assert set(res["results"]) == {"pgd-image@16/255", "latent@0.5"}
    recs = [json.loads(x) for x in (tmp_path / "eval" / "samples_pgd-image.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["norms"]["image_linf"] <= 16 / 255 + 1e-6 for r in recs)
    assert all(r["margin"] is not None and r["attack_loss"] is not None for r in recs)


def test_text_only_model_is_refused_with_what_it_lacks():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UnsupportedModel, match="pixel_values.*not an image-text model"):
        inspect_model(model)


def test_processor_without_chat_template_is_refused():
    """PaliGemma's processor has no chat template (it is a prefix-LM prompted with raw text)."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    from adpo.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = None
    processor = PaliGemmaProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                   tokenizer=tok)
    cfg = PaliGemmaConfig(text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=32,
                                           intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=2, head_dim=16),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    model = PaliGemmaForConditionalGeneration(cfg)
    with pytest.raises(UnsupportedModel, match="chat template"):
        inspect_model(model, processor)


def test_a_processor_of_another_model_is_refused():
    model, _ = synthetic.build("llava")
    _, qwen_processor = synthetic.build("qwen2_vl")
    with pytest.raises(UnsupportedModel, match="image token"):
        inspect_model(model, qwen_processor)


def test_untested_family_warns_and_a_model_without_decoder_is_refused():
    model, _ = synthetic.build("llava")
    model.config.model_type = "my_vlm"
    with pytest.warns(UserWarning, match="not one of adpo's tested families"):
        assert inspect_model(model).family == "untested"
    with pytest.raises(UnsupportedModel, match="get_decoder"):
        inspect_model(nn.Linear(2, 2))


def test_llava_7b_shape_is_llava_1_5_7b():
    """The GPU check's model has llava-hf/llava-1.5-7b-hf's parameter count and image grid (built on meta)."""
    model, processor = synthetic.build("llava", synthetic.LLAVA_7B, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    info = inspect_model(model, processor)
    assert (info.n_layers, info.hidden_size, info.vocab_size) == (32, 4096, 32064)
    assert model.config.image_seq_length == 576 and processor.image_processor.crop_size["height"] == 336
