"""`adpo export`: the adapter merged into a plain transformers folder that loads with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from adpo.cli import main


@pytest.fixture()
def trained_adapter(tiny_dir, tmp_path):
    """A LoRA adapter whose weights are not the identity (B random), saved as adpo train saves it."""
    from adpo.models.adapters import LoraSettings, build_policy, load_base, save_trained

    base, processor = load_base(tiny_dir)
    policy = build_policy(base, LoraSettings(r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    record = {"steps": 3, "config": {"method": "adpo", "model": str(tiny_dir), "data": "pairs.jsonl"}}
    return save_trained(policy, processor, tmp_path / "run", record, base=tiny_dir)


def test_export_merges_into_a_folder_that_loads_with_identical_logits(tiny_dir, trained_adapter, tmp_path,
                                                                     processor, world):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from adpo.data.collate import collate, image_keys

    results = {"results": {"pgd-image@16/255": {"asr,organism": 0.25, "margin,none": 1.5, "n_behaviours,none": 8}},
               "judges": {"organism": "ok"}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "merged"
    assert main(["export", "--model", str(tiny_dir), "--adapter", str(tmp_path / "run"), "--out", str(out),
                 "--results", str(tmp_path / "results.json")]) == 0
    assert list(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), trained_adapter).eval()
    plain = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    rng = world.rng("export")
    s = world.harm_sample("train", rng, 0.0)
    batch = collate(processor, [Image.fromarray(world.render(s, rng))], [s.prompt], [s.meta["refusal"]])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **image_keys(batch)}
    with torch.no_grad():
        a, b, c = (m(**inputs).logits for m in (merged, peft, plain))
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)  # merged = adapter != base
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(tiny_dir) and front["library_name"] == "transformers"
    assert "| pgd-image@16/255 | 0.25 | 1.5 |" in card
    # an occupied folder is never overwritten; an earlier export is replaced
    assert main(["export", "--model", str(tiny_dir), "--adapter", str(tmp_path / "run"), "--out", str(tmp_path)]) == 2
    assert main(["export", "--model", str(tiny_dir), "--adapter", str(tmp_path / "run"), "--out", str(out)]) == 0
