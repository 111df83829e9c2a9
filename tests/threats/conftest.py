"""Tiny random models of three families, built offline (no weights, no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adpo.data.collate import collate


def images(n: int, size=(32, 32), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture()
def llava(processor, tiny_cfg):
    from adpo.organism.build import build_model

    model = build_model(processor, 32, tiny_cfg, seed=0).eval()
    batch = collate(processor, images(3), ["what shape is it?", "how do i fix the car?", "count the objects."],
                    ["circle.", "sure, here is how to fix the car.", "three."])
    return model, processor, batch


@pytest.fixture(scope="session")
def next_processor():
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    from adpo.organism.tokenizer import CHAT_TEMPLATE, build_tokenizer

    pins = [[32, 64], [64, 32], [64, 64]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pins)
    return LlavaNextProcessor(image_processor=ip, tokenizer=build_tokenizer(), patch_size=8,
                              vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                              num_additional_image_tokens=1)


@pytest.fixture()
def llava_next(next_processor):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    tok = next_processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    image_id = tok.convert_tokens_to_ids("<image>")
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                          image_grid_pinpoints=next_processor.image_processor.image_grid_pinpoints, image_seq_length=16,
                          vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    enc = next_processor(images=images(2, (32, 48)), text=["USER: <image>\nwhat is it?\nASSISTANT:"] * 2,
                         return_tensors="pt")
    resp = tok([" a thing.</s>"] * 2, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([enc["input_ids"], resp], 1)
    labels = ids.clone()
    labels[:, : enc["input_ids"].shape[1]] = -100
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, : enc["input_ids"].shape[1]] = True
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "prompt_mask": prompt_mask,
             "pixel_values": enc["pixel_values"], "image_sizes": enc["image_sizes"]}
    return model, next_processor, batch


@pytest.fixture(scope="session")
def qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                    max_pixels=64 * 64)


QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@pytest.fixture()
def qwen2vl(qwen_image_processor):
    """A tiny random Qwen2-VL with a hand-built batch (no Qwen processor: it needs torchvision for video)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from adpo.organism.tokenizer import build_tokenizer

    tok = build_tokenizer(extra_specials=QWEN_SPECIALS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    out = qwen_image_processor(images(2, (32, 48)), return_tensors="pt")
    n_img = int(out["image_grid_thw"][0].prod()) // 4  # merged tokens per image
    prompt = ([tok.bos_token_id, ids["<|vision_start|>"]] + [ids["<|image_pad|>"]] * n_img + [ids["<|vision_end|>"]]
              + tok("what is it?", add_special_tokens=False)["input_ids"])
    answer = tok(" a thing.", add_special_tokens=False)["input_ids"] + [ids["<|im_end|>"]]
    row = torch.tensor(prompt + answer)
    input_ids = row.repeat(2, 1)
    labels = input_ids.clone()
    labels[:, : len(prompt)] = -100
    prompt_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    prompt_mask[:, : len(prompt)] = True
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "prompt_mask": prompt_mask, "pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"],
             "mm_token_type_ids": (input_ids == ids["<|image_pad|>"]).long()}
    return model, qwen_image_processor, batch
