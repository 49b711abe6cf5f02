"""Digital corruptions: JPEG compression and pixelation (ImageNet-C tables)."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from medxai.corruptions.base import register
from medxai.errors import InputError

JPEG_QUALITY = (25, 18, 15, 10, 7)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)


@register("jpeg", table=JPEG_QUALITY, kind="digital", source="ImageNet-C")
def jpeg(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Encode and decode with libjpeg (PIL) at quality q = 25, 18, 15, 10, 7 after rounding to 8 bits.

    The one corruption that leaves torch: PIL codes one image at a time on the CPU (fine for
    evaluation and augmentation; it is not a per-step attack loop). C must be 1 or 3.
    """
    from PIL import Image

    if x.shape[1] not in (1, 3):
        raise InputError(f"jpeg needs 1 or 3 channels, got {x.shape[1]}")
    q = JPEG_QUALITY[severity - 1]
    arr = (x.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("L" if img.shape[2] == 1 else "RGB"))
        out[i] = dec.reshape(img.shape)
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).float() / 255


def _block_means(n: int, c: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel i belongs to block floor(i c); returns (averaging matrix (blocks, n), block index (n,))."""
    idx = torch.floor(torch.arange(n, device=device, dtype=torch.float64) * c).long()
    a = F.one_hot(idx).T.float()
    return a / a.sum(1, keepdim=True), idx


@register("pixelate", table=PIXELATE, kind="digital", source="ImageNet-C")
def pixelate(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Blocks of 1 / c pixels (c = 0.6, 0.5, 0.4, 0.3, 0.25, ImageNet-C's factors) take their mean:
    row i and column j belong to block (floor(i c), floor(j c)). Like ImageNet-C's box down- and
    up-sampling, but with blocks aligned to the pixel grid, so distortion grows with severity."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    ar, ir = _block_means(h, c, x.device)
    ac, ic = _block_means(w, c, x.device)
    small = torch.einsum("kh,bchw,lw->bckl", ar, x, ac)
    return small[:, :, ir][:, :, :, ic]
