"""Blur corruptions. Tables from ImageNet-C (Hendrycks & Dietterich 2019) at 224 px; every length
(sigma, radius) is multiplied by ``s = min(H, W) / 224``. ``gaussian_blur`` also blurs volumes
(B, C, D, H, W) with a 3-D Gaussian (isotropic voxels assumed: the same sigma in voxels along D, H
and W, s from the in-plane size); defocus and motion blur are 2-D only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medxai.corruptions._filters import conv_same, gaussian_kernel1d, shift_sum
from medxai.corruptions._filters import gaussian_blur as _gauss
from medxai.corruptions.base import rand, register, size_scale
from medxai.errors import InputError

GAUSSIAN_SIGMA = (1.0, 2.0, 3.0, 4.0, 6.0)
DEFOCUS = ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5))  # (disk radius, alias blur sigma)
# (radius, sigma): ImageNet-C's first four levels (the fundus study used four levels of motion blur)
MOTION = ((10.0, 3.0), (15.0, 5.0), (15.0, 8.0), (15.0, 12.0))


@register("gaussian_blur", table=GAUSSIAN_SIGMA, kind="blur", source="ImageNet-C", volumes=True)
def gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``x * G_sigma`` (separable Gaussian, replicate border), sigma = (1, 2, 3, 4, 6) * s px;
    volumes: the 3-D separable Gaussian, the same sigma in voxels along D, H and W."""
    sigma = GAUSSIAN_SIGMA[severity - 1] * size_scale(x)
    return _gauss3d(x, sigma) if x.ndim == 5 else _gauss(x, sigma)


def _gauss3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of (B, C, D, H, W) along W, H, D (taps -r..r, r = ceil(3 sigma)), replicate padding."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, x.device).to(x.dtype)
    r, c = (k.numel() - 1) // 2, x.shape[1]
    for ax in (4, 3, 2):
        pad = [0] * 6
        pad[2 * (4 - ax)], pad[2 * (4 - ax) + 1] = r, r
        shape = [1, 1, 1]
        shape[ax - 2] = -1
        x = F.conv3d(F.pad(x, tuple(pad), mode="replicate"), k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def _planar(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise InputError(f"{name} is a 2-D corruption of (B, C, H, W) images, got shape {tuple(x.shape)}")


def disk_kernel(radius: float, device: torch.device) -> torch.Tensor:
    """A normalised disk of ``radius`` px with a one-pixel soft edge: w(d) = clip(r + 0.5 - d, 0, 1)."""
    r = max(1, math.ceil(radius + 0.5))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    d = torch.sqrt(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2)
    k = (radius + 0.5 - d).clamp(0, 1)
    return k / k.sum()


@register("defocus_blur", table=DEFOCUS, kind="blur", source="ImageNet-C")
def defocus_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``(x * disk_r) * G_a``: a disk (circle of confusion) of radius r = (3, 4, 6, 8, 10) * s px
    with a soft edge, then a Gaussian of sigma a = (0.1, 0.5, 0.5, 0.5, 0.5) * s px (ImageNet-C's
    anti-aliasing of the disk)."""
    _planar(x, "defocus_blur")
    radius, alias = DEFOCUS[severity - 1]
    s = size_scale(x)
    return _gauss(conv_same(x, disk_kernel(radius * s, x.device)), alias * s)


@register("motion_blur", table=MOTION, kind="blur", source="ImageNet-C (imagecorruptions' kernel); fundus study")
def motion_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """A one-sided streak: ``out(p) = sum_t k_t x(p + t u)`` for t = 0, 1, .. n - 1 px,
    n = ceil((2 radius + 1) s), ``k_t ∝ exp(-t^2 / (2 (sigma s)^2))``, u = (sin a, cos a) with
    the angle a ~ U(-45, 45) degrees per image; (radius, sigma) = (10, 3), (15, 5), (15, 8),
    (15, 12) at 224 px (ImageNet-C's levels 1-4; the fundus study had four). Sub-pixel positions
    are read bilinearly, the border is replicated."""
    _planar(x, "motion_blur")
    radius, sigma = MOTION[severity - 1]
    s = size_scale(x)
    b = x.shape[0]
    angle = torch.deg2rad(rand((b,), gen, x) * 90 - 45)
    n = max(1, math.ceil((2 * radius + 1) * s))
    t = torch.arange(n, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / (sigma * s)) ** 2)
    k = k / k.sum()
    u = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)  # (B, 2) as (dy, dx)
    offsets = t.view(1, n, 1) * u.view(b, 1, 2)
    return shift_sum(x, offsets, k)
