"""Photometric corruptions: brightness, contrast (ImageNet-C), gamma, under- and over-exposure
(the fundus study's camera faults), haze. None has a spatial length, so none scales with size
(haze's smooth veil is drawn on a fixed coarse grid and resized to the image). All but haze also
take volumes (B, C, D, H, W) (contrast's mean is then per volume and channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medxai.corruptions.base import rand, register
from medxai.errors import InputError

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
GAMMA = (1.25, 1.5, 2.0, 2.5, 3.0)
UNDER_EV = (-0.5, -1.0, -1.5, -2.0)
OVER_EV = (0.5, 1.0, 1.5, 2.0)
HAZE_T = (0.85, 0.7, 0.55, 0.4, 0.25)
HAZE_VARIATION = 0.1
HAZE_GRID = 4


@register("brightness", table=BRIGHTNESS, kind="photometric", source="ImageNet-C", volumes=True)
def brightness(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """HSV value + c, c = 0.1 .. 0.5 (ImageNet-C), computed without a colour-space round trip:
    with hue and saturation fixed RGB is proportional to V = max_c x, so
    ``out = x * V' / V`` with ``V' = min(V + c, 1)``; black (V = 0, saturation 0) becomes grey V'.
    As in ImageNet-C, near-black pixels keep their hue: a JPEG-noisy black surround turns coloured.
    One channel: ``clip(x + c)``."""
    c = BRIGHTNESS[severity - 1]
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))


@register("contrast", table=CONTRAST, kind="photometric", source="ImageNet-C", volumes=True)
def contrast(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``(x - m) * c + m`` with m the per-image, per-channel mean; c = 0.4 .. 0.05 (ImageNet-C)."""
    m = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    return ((x - m) * CONTRAST[severity - 1] + m).clamp(0, 1)


@register("gamma", table=GAMMA, kind="photometric", source="ours", volumes=True)
def gamma(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``x ** g``, g = 1.25, 1.5, 2, 2.5, 3 (ours): mid-tones darken, black and white stay."""
    return x.pow(GAMMA[severity - 1])


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1: ``x / 12.92`` below 0.04045, else ``((x + 0.055) / 1.055) ** 2.4``."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))


def linear_to_srgb(y: torch.Tensor) -> torch.Tensor:
    """Inverse of ``srgb_to_linear``."""
    y = y.clamp(0, 1)
    return torch.where(y <= 0.0031308, y * 12.92, 1.055 * y.clamp_min(1e-12).pow(1 / 2.4) - 0.055)


def _exposure(x: torch.Tensor, ev: float) -> torch.Tensor:
    return linear_to_srgb((srgb_to_linear(x) * 2.0**ev).clamp(0, 1))


@register("underexposure", table=UNDER_EV, kind="photometric", source="fundus study; definitions.md section 3",
          volumes=True)
def underexposure(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Exposure change by EV = -0.5, -1, -1.5, -2 stops: the image is taken as sRGB-encoded,
    linearised, multiplied by ``2 ** EV``, clipped to [0, 1] and re-encoded."""
    return _exposure(x, UNDER_EV[severity - 1])


@register("overexposure", table=OVER_EV, kind="photometric", source="fundus study; definitions.md section 3",
          volumes=True)
def overexposure(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """As ``underexposure`` with EV = +0.5, +1, +1.5, +2: highlights clip to white."""
    return _exposure(x, OVER_EV[severity - 1])


@register("haze", table=HAZE_T, kind="photometric", source="ours (Koschmieder's scattering model)")
def haze(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Koschmieder's model ``out = x * t + A * (1 - t)`` with airlight A = 1 (a white veil) and
    transmission ``t = clip(t0 + 0.1 * m, 0, 1)``, t0 = 0.85, 0.7, 0.55, 0.4, 0.25 (ours); m in
    [-1, 1] is a smooth random field per image (uniform noise on a 4 x 4 grid, bicubic-resized to
    the image, so it looks alike at every size). Same seed: the veil thickens pointwise with severity.
    2-D only."""
    if x.ndim != 4:
        raise InputError(f"haze is a 2-D corruption of (B, C, H, W) images, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    m = rand((b, 1, HAZE_GRID, HAZE_GRID), gen, x) * 2 - 1
    m = F.interpolate(m, size=(h, w), mode="bicubic", align_corners=True).clamp(-1, 1)
    t = (HAZE_T[severity - 1] + HAZE_VARIATION * m).clamp(0, 1)
    return x * t + (1 - t)
