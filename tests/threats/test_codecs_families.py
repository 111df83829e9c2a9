import numpy as np
import pytest
import torch

from adpo.threats.codecs import ElementwiseCodec, QwenPatchCodec, codec_for

from .conftest import images


def test_llava_next_5d_round_trip(next_processor):
    out = next_processor.image_processor(images(2, (32, 48)), return_tensors="pt")
    pv = out["pixel_values"]
    assert pv.dim() == 5
    codec = codec_for(next_processor)
    assert isinstance(codec, ElementwiseCodec)
    x = codec.decode(pv)
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    assert torch.allclose(codec.encode(x), pv, atol=1e-6)


def test_qwen_patchify_equals_processor(qwen_image_processor):
    imgs = images(3, (32, 48))
    out = qwen_image_processor(imgs, return_tensors="pt")
    codec = codec_for(qwen_image_processor)
    assert isinstance(codec, QwenPatchCodec)
    x = codec.decode(out["pixel_values"], out["image_grid_thw"])
    raw = torch.from_numpy(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, raw, atol=1e-6)  # no resize at this size: decode recovers the pixels
    assert torch.allclose(codec.encode(x), out["pixel_values"], atol=1e-6)


def test_qwen_codec_rejects_mixed_grids(qwen_image_processor):
    out = qwen_image_processor(images(1, (32, 48)) + images(1, (32, 32)), return_tensors="pt")
    with pytest.raises(ValueError, match="different patch grids"):
        codec_for(qwen_image_processor).decode(out["pixel_values"], out["image_grid_thw"])


def test_qwen_encode_is_differentiable(qwen_image_processor):
    codec = codec_for(qwen_image_processor)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    codec.encode(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name,kwargs", [
    ("SiglipImageProcessorPil", {"size": {"height": 32, "width": 32}}),  # PaliGemma, 4-D
    ("Idefics3ImageProcessorPil", {"size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32},
                                   "do_image_splitting": True}),  # Idefics3 / SmolVLM, 5-D crops
])
def test_elementwise_families_round_trip(name, kwargs):
    import transformers

    ip = getattr(transformers, name)(**kwargs)
    imgs = images(2, (40, 56))
    pv = ip(imgs, return_tensors="pt")["pixel_values"]
    codec = codec_for(ip)
    assert isinstance(codec, ElementwiseCodec)
    unit = ip(imgs, return_tensors="pt", do_normalize=False)["pixel_values"]
    assert torch.allclose(codec.decode(pv), unit, atol=1e-6)  # decode is the processor's own [0,1] image
    assert torch.allclose(codec.encode(codec.decode(pv)), pv, atol=1e-6)


def test_idefics3_padding_crops_stay_zero_under_perturbation():
    """Idefics3 drops crops that are exactly zero; a perturbed padding crop would become an extra image."""
    from transformers import Idefics3ImageProcessorPil

    from adpo.threats.codecs import PaddedCropCodec, codec_inputs

    ip = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=True)
    out = ip([images(1, (64, 64)), images(1, (64, 20))], return_tensors="pt")  # 5 crops vs fewer + padding
    codec = codec_for(ip)
    assert isinstance(codec, PaddedCropCodec)
    kw = codec_inputs(codec, out)
    padding = ~out["pixel_attention_mask"].flatten(-2).any(-1)
    assert padding.any()
    x = codec.decode(out["pixel_values"], **kw)
    moved = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    enc = codec.encode(moved, **kw)
    assert (enc[padding] == 0).all() and (enc[~padding] != 0).any()
    assert torch.allclose(codec.encode(x, **kw), out["pixel_values"], atol=1e-6)
