"""Speckle: the multiplicative grain of coherent imaging (ultrasound, OCT).

``out = min(x * g, 1)`` with g gamma-distributed of mean 1 and standard deviation sigma (shape
k = 1 / sigma^2, scale sigma^2: the intensity of k-look fully developed speckle, Goodman 1976),
one draw per pixel and channel. g is drawn by the Wilson-Hilferty transform of one standard normal
z, ``g = max(1 - sigma^2 / 9 + z sigma / 3, 0)^3``, so the same z serve every level (with one seed
a larger level is the same speckle, only stronger) and g >= 0 needs no clip at 0 (the floor acts
with probability below 1e-6 at sigma = 0.6). The one clip, ``min(., 1)``, is the display's
saturation of bright pixels times g > 1 (as ImageNet-C's speckle_noise clips). Levels: ImageNet-C's
speckle c = (.15, .2, .35, .45, .6) read as sigma. Per-pixel noise does not scale with size.
"""

from __future__ import annotations

import torch

from medxai.corruptions.base import randn, register

SPECKLE = (0.15, 0.2, 0.35, 0.45, 0.6)


def speckle_gain(shape: tuple[int, ...], sigma: float, gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Multiplicative speckle g ~ Gamma(1 / sigma^2, sigma^2) (Wilson-Hilferty), mean 1, std sigma."""
    z = randn(shape, gen, like)
    return (1 - sigma**2 / 9 + z * sigma / 3).clamp_min(0).pow(3)


@register("speckle", table=SPECKLE, kind="ultrasound", source="Goodman 1976 (gamma speckle); ImageNet-C levels")
def speckle(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``min(x * g, 1)``, g ~ Gamma(k = 1 / sigma^2, theta = sigma^2), sigma = .15 .. .6 (module docstring)."""
    return (x * speckle_gain(tuple(x.shape), SPECKLE[severity - 1], gen, x)).clamp(max=1.0)
