"""Light leakage: a camera fault of fundus photography (definitions.md section 3).

Stray light entering at the rim of the circular field of view adds a blurred, whitish glow that
peaks at the rim and spills past it. No public definition exists (the fundus study's code was
proprietary); this model is ours:

    glow(p) = A * exp(-((1 - r) / w)^2) * ((1 + cos(phi - theta)) / 2)^kappa
    out = clip(x + glow * colour)

r: distance from the field-of-view centre over its radius (r > 1 outside the disc); phi: the
pixel's angle around the centre; theta ~ U(0, 2 pi) the direction of the leak and
kappa ~ U(0, 4) its concentration (0: a full ring, 4: a one-sided crescent), drawn per image;
colour (1, 0.95, 0.85) (warm white; grey images: 1). The field of view is found per image as the
pixels brighter than 10% of the image's maximum mean-channel intensity: centre = their centroid,
radius = sqrt(area / pi); images without a dark surround (more than 90% of pixels bright) or
almost no bright pixels use the centred inscribed circle. Everything is in units of the radius,
so a level looks alike at every resolution.
"""

from __future__ import annotations

import math

import torch

from medxai.corruptions.base import rand, register

#: (amplitude A, width w in units of the field-of-view radius) for levels 1-4.
LEAKAGE = ((0.35, 0.12), (0.55, 0.18), (0.75, 0.25), (0.95, 0.33))
COLOUR = (1.0, 0.95, 0.85)
KAPPA_MAX = 4.0
FOV_THRESHOLD = 0.1


def field_of_view(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image (B,) centre row, centre column and radius in pixels of the circular field of view."""
    b, _, h, w = x.shape
    lum = x.mean(1)
    mask = (lum > FOV_THRESHOLD * lum.flatten(1).amax(1).view(b, 1, 1)).float()
    area = mask.sum((1, 2))
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    cy = (mask * rows).sum((1, 2)) / area.clamp_min(1)
    cx = (mask * cols).sum((1, 2)) / area.clamp_min(1)
    radius = torch.sqrt(area / math.pi)
    fallback = (area > 0.9 * h * w) | (area < 0.01 * h * w)
    cy = torch.where(fallback, torch.full_like(cy, (h - 1) / 2), cy)
    cx = torch.where(fallback, torch.full_like(cx, (w - 1) / 2), cx)
    radius = torch.where(fallback, torch.full_like(radius, min(h, w) / 2), radius)
    return cy, cx, radius


def leakage_glow(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """The additive glow (B, 1, H, W) before colour and clipping (see the module docstring)."""
    b, _, h, w = x.shape
    theta = rand((b,), gen, x) * 2 * math.pi
    kappa = rand((b,), gen, x) * KAPPA_MAX
    amp, width = LEAKAGE[severity - 1]
    cy, cx, radius = field_of_view(x)
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    dy, dx = rows - cy.view(b, 1, 1), cols - cx.view(b, 1, 1)
    r = torch.sqrt(dy**2 + dx**2) / radius.view(b, 1, 1)
    phi = torch.atan2(dy, dx)
    side = ((1 + torch.cos(phi - theta.view(b, 1, 1))) / 2).pow(kappa.view(b, 1, 1))
    return (amp * torch.exp(-(((1 - r) / width) ** 2)) * side).unsqueeze(1)


@register("light_leakage", table=LEAKAGE, kind="fundus", source="ours (definitions.md section 3); fundus study")
def light_leakage(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``clip(x + A exp(-((1 - r)/w)^2) ((1 + cos(phi - theta))/2)^kappa * colour)``;
    (A, w) = (0.35, 0.12), (0.55, 0.18), (0.75, 0.25), (0.95, 0.33); ours, see the module docstring."""
    glow = leakage_glow(x, severity, gen)
    c = x.shape[1]
    colour = torch.tensor(COLOUR if c == 3 else (1.0,) * c, device=x.device, dtype=torch.float32).view(1, c, 1, 1)
    return (x + glow * colour).clamp(0, 1)
