"""Dermoscopy artefacts: the dermatoscope's black corners, pen marks, hair.

Marks are painted by alpha compositing, ``out = (1 - a m) x + a m colour`` with a soft mask
m in [0, 1] and opacity a <= 1: a convex mix of two colours in [0, 1], so no clip is needed. Curves
(pen strokes, hairs) are quadratic Bezier curves whose three control points are uniform over the
image, drawn for the largest count at every level (with one seed a larger level adds strokes to
the same ones); the mask of a curve of width w px is ``clip(w / 2 + 0.5 - d, 0, 1)`` with d the
distance to the curve (a one-pixel soft edge, as ``blur.disk_kernel``). Widths are at 224 px and
scale with ``min(H, W) / 224``; a hair thinner than a pixel stays partly visible.
"""

from __future__ import annotations

import math

import torch

from medxai.corruptions.base import rand, register, size_scale

#: radius of the dermatoscope's circular field over min(H, W) / 2 (MedMNIST-C black_corner's multiplier).
CORNERS = (1.3, 1.2, 1.1, 1.0, 0.9)
#: (number of pen strokes, width in px at 224).
INK = ((1, 3.0), (2, 4.0), (3, 5.0), (4, 6.0), (5, 8.0))
#: (number of hairs, width in px at 224).
HAIR = ((4, 1.5), (8, 1.5), (12, 2.0), (18, 2.0), (25, 2.5))
INK_COLOUR = (0.42, 0.22, 0.62)  # gentian violet skin marker
INK_OPACITY = 0.85
HAIR_COLOUR = (0.12, 0.08, 0.06)
HAIR_OPACITY = 0.9
CURVE_POINTS = 17


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w)
    return rows, cols


@register("black_corners", table=CORNERS, kind="dermoscopy", source="MedMNIST-C black_corner (Di Salvo et al. 2024)")
def black_corners(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``x * clip(R + 0.5 - d, 0, 1)``: black outside the centred circle of radius
    R = r min(H, W) / 2, r = (1.3, 1.2, 1.1, 1.0, 0.9); d the distance to the image centre."""
    h, w = x.shape[-2:]
    rows, cols = _grid(x)
    d = torch.sqrt((rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2)
    radius = CORNERS[severity - 1] * min(h, w) / 2
    return x * (radius + 0.5 - d).clamp(0, 1)


def curve_mask(x: torch.Tensor, count: int, most: int, width: float, gen: torch.Generator | None) -> torch.Tensor:
    """Union (max) of the first ``count`` of ``most`` random quadratic Bezier curves of ``width`` px:
    (B, 1, H, W) in [0, 1]."""
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    pts = rand((b, most, 3, 2), gen, x)[:, :count] * torch.tensor([h - 1, w - 1], device=x.device, dtype=torch.float32)
    t = torch.linspace(0, 1, CURVE_POINTS, device=x.device).view(1, 1, -1, 1)
    curve = (1 - t) ** 2 * pts[:, :, :1] + 2 * t * (1 - t) * pts[:, :, 1:2] + t**2 * pts[:, :, 2:]  # (B, n, P, 2)
    rows, cols = _grid(x)
    dist = torch.full((b, count, h, w), math.inf, device=x.device)
    for i in range(CURVE_POINTS - 1):  # distance to each segment of the polyline
        p = curve[:, :, i].view(b, count, 2, 1, 1)
        q = curve[:, :, i + 1].view(b, count, 2, 1, 1)
        v = q - p
        s = (((rows - p[:, :, 0]) * v[:, :, 0] + (cols - p[:, :, 1]) * v[:, :, 1])
             / (v**2).sum(2).clamp_min(1e-12)).clamp(0, 1)
        dy, dx = rows - (p[:, :, 0] + s * v[:, :, 0]), cols - (p[:, :, 1] + s * v[:, :, 1])
        dist = torch.minimum(dist, torch.sqrt(dy**2 + dx**2))
    return (width / 2 + 0.5 - dist).clamp(0, 1).amax(1, keepdim=True)


def paint(x: torch.Tensor, mask: torch.Tensor, colour: tuple[float, float, float], opacity: float) -> torch.Tensor:
    """``(1 - a m) x + a m colour``; one channel: the colour's mean, other channel counts: grey."""
    c = x.shape[1]
    rgb = colour if c == 3 else (sum(colour) / 3,) * c
    col = torch.tensor(rgb, device=x.device, dtype=torch.float32).view(1, c, 1, 1)
    am = opacity * mask
    return (1 - am) * x + am * col


@register("ink_marks", table=INK, kind="dermoscopy", source="ours (surgical pen marks, Winkler et al. 2019)")
def ink_marks(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Purple pen strokes: (count, width px at 224) = (1, 3), (2, 4), (3, 5), (4, 6), (5, 8),
    opacity 0.85, colour (0.42, 0.22, 0.62); curves and compositing in the module docstring."""
    count, width = INK[severity - 1]
    return paint(x, curve_mask(x, count, INK[-1][0], width * size_scale(x), gen), INK_COLOUR, INK_OPACITY)


@register("hair", table=HAIR, kind="dermoscopy", source="ours (hair augmentation, cf. DullRazor, Lee et al. 1997)")
def hair(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Thin dark hairs: (count, width px at 224) = (4, 1.5), (8, 1.5), (12, 2), (18, 2), (25, 2.5),
    opacity 0.9, colour (0.12, 0.08, 0.06)."""
    count, width = HAIR[severity - 1]
    return paint(x, curve_mask(x, count, HAIR[-1][0], width * size_scale(x), gen), HAIR_COLOUR, HAIR_OPACITY)
