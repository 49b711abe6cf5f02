"""JPEG equals PIL's codec; pixelation is the mean of aligned blocks."""

import io

import numpy as np
import torch
from PIL import Image

from medxai.corruptions import apply
from medxai.corruptions.digital import JPEG_QUALITY


def test_jpeg_equals_pil_round_trip():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = apply(x, "jpeg", 4)
    for i in range(2):
        arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY[3])
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float32) / 255
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)


def test_pixelate_half_is_two_by_two_means():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = apply(x, "pixelate", 2)  # c = 0.5: 2 x 2 blocks
    ref = x.view(1, 3, 8, 2, 8, 2).mean((3, 5)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.allclose(out, ref, atol=1e-6)
    out5 = apply(x, "pixelate", 5)  # c = 0.25: 4 x 4 blocks
    assert torch.allclose(out5, x.view(1, 3, 4, 4, 4, 4).mean((3, 5)).repeat_interleave(4, 2).repeat_interleave(4, 3),
                          atol=1e-6)
