import numpy as np
import torch
from PIL import Image

from adpo.threats.codecs import ElementwiseCodec, uint8_to_unit, unit_images


def test_codec_equals_processor_pixel_values(processor):
    rng = np.random.default_rng(0)
    arrs = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    imgs = [Image.fromarray(a) for a in arrs]
    ref = torch.as_tensor(np.asarray(processor.image_processor(imgs, return_tensors="np")["pixel_values"]))
    codec = ElementwiseCodec.from_processor(processor)
    assert torch.allclose(codec.encode(unit_images(processor, imgs)), ref, atol=1e-6)
    assert torch.allclose(codec.encode(uint8_to_unit(arrs)), ref, atol=1e-6)
    assert torch.allclose(codec.decode(ref), uint8_to_unit(arrs), atol=1e-6)


def test_codec_reads_stats_from_processor(processor):
    codec = ElementwiseCodec.from_processor(processor)
    assert codec.mean == tuple(processor.image_processor.image_mean)
    assert codec.std == tuple(processor.image_processor.image_std)
