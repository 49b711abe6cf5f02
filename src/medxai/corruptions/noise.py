"""Noise corruptions (ImageNet-C, Hendrycks & Dietterich 2019, parameter tables as published).

Per-pixel noise does not depend on resolution, so these tables do not scale. Every one works on
volumes (B, C, D, H, W) unchanged: the noise is drawn per voxel.
"""

from __future__ import annotations

import torch

from medxai.corruptions.base import rand, randn, register

GAUSSIAN = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT = (60.0, 25.0, 12.0, 5.0, 3.0)
IMPULSE = (0.03, 0.06, 0.09, 0.17, 0.27)


@register("gaussian_noise", table=GAUSSIAN, kind="noise", source="ImageNet-C", volumes=True)
def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``clip(x + c * z)``, z ~ N(0, 1) per pixel and channel, c = 0.08 .. 0.38."""
    return (x + GAUSSIAN[severity - 1] * randn(x.shape, gen, x)).clamp(0, 1)


@register("shot_noise", table=SHOT, kind="noise", source="ImageNet-C", volumes=True)
def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Photon noise ``clip(Poisson(x * c) / c)``, c = 60 .. 3 photons at full intensity."""
    c = SHOT[severity - 1]
    return (torch.poisson(x * c, generator=gen) / c).clamp(0, 1)


@register("impulse_noise", table=IMPULSE, kind="noise", source="ImageNet-C (skimage 's&p')", volumes=True)
def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Salt and pepper: with u ~ U(0, 1) per value, 1 where u < a/2, 0 where u > 1 - a/2;
    amount a = 0.03 .. 0.27 (the same u for every severity: the corrupted sets are nested)."""
    a = IMPULSE[severity - 1]
    u = rand(x.shape, gen, x)
    out = torch.where(u < a / 2, torch.ones_like(x), x)
    return torch.where(u > 1 - a / 2, torch.zeros_like(x), out)
