"""Histopathology artefacts: stain variation between labs and scanners, air bubbles under the coverslip.

Stain variation works in optical density (Beer-Lambert): ``OD = -log10(max(x, 1e-6))`` per RGB
channel (1e-6: the darkest transmission measured), stain amounts ``c = OD M^-1`` with M the
Ruifrok & Johnston (2001) matrix whose rows are the unit OD vectors of haematoxylin, eosin and DAB
(scikit-image's ``rgb_from_hed``; its ``rgb2hed`` is ``c / 6``: natural log over -ln 1e-6, and
clipped at 0, which we do not do). Tellez et al. (2019, "HED" augmentation): ``c' = a c + b`` per
stain, a ~ U(1 - sigma, 1 + sigma), b ~ U(-sigma, sigma) (b in OD units), drawn per image; then
``out = 10^-max(c' M, 0)``. The floor at OD 0 is the one clip and part of the model: a slide
cannot transmit more than the lamp's light (it acts where b < 0 lightens the white background).
"""

from __future__ import annotations

import torch

from medxai.corruptions._filters import gaussian_blur
from medxai.corruptions.base import rand, register, size_scale
from medxai.errors import InputError

#: Ruifrok & Johnston 2001: rows = OD vectors of haematoxylin, eosin, DAB (scikit-image rgb_from_hed).
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
OD_FLOOR = 1e-6
#: sigma of Tellez et al.'s HED perturbation (their "HED-light" is 0.05, "HED-strong" 0.2).
STAIN = (0.02, 0.05, 0.1, 0.15, 0.2)
#: (number of bubbles, radius in px at 224).
BUBBLES = ((1, 20.0), (2, 25.0), (3, 30.0), (4, 35.0), (6, 40.0))
BUBBLE_FILL = 0.4  # whitening inside (MedMNIST-C bubble: alpha 100 / 255)
BUBBLE_RIM = 0.5  # whitening of the rim (MedMNIST-C: 130 / 255)
BUBBLE_RIM_WIDTH = 2.0  # px at 224
BUBBLE_BLUR = 3.0  # sigma in px at 224 of the defocused content inside a bubble


def _hed_matrix(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(RGB_FROM_HED, device=x.device, dtype=torch.float64)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """Stain amounts (B, 3, ...) in OD units: ``-log10(max(x, 1e-6)) M^-1`` per pixel (unclipped)."""
    od = -torch.log10(x.double().clamp_min(OD_FLOOR))
    return torch.einsum("bc...,cs->bs...", od, torch.linalg.inv(_hed_matrix(x)))


def hed_to_rgb(c: torch.Tensor) -> torch.Tensor:
    """``10^-max(c M, 0)``: back to RGB transmission in (0, 1] (float32)."""
    od = torch.einsum("bs...,sc->bc...", c.double(), _hed_matrix(c))
    return torch.pow(10.0, -od.clamp_min(0)).float()


@register("stain_variation", table=STAIN, kind="histology", source="Tellez et al. 2019 HED; Ruifrok & Johnston 2001")
def stain_variation(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``10^-max((a c + b) M, 0)``, c = ``rgb_to_hed(x)``, a ~ U(1 +- sigma), b ~ U(+-sigma) per image
    and stain, sigma = (.02, .05, .1, .15, .2). RGB only."""
    if x.shape[1] != 3:
        raise InputError(f"stain_variation needs RGB images (3 channels), got {x.shape[1]}")
    sigma = STAIN[severity - 1]
    b = x.shape[0]
    view = (b, 3, *([1] * (x.ndim - 2)))
    a = (1 + sigma * (2 * rand((b, 3), gen, x) - 1)).view(view)
    shift = (sigma * (2 * rand((b, 3), gen, x) - 1)).view(view)
    return hed_to_rgb(a * rgb_to_hed(x) + shift)


@register("bubbles", table=BUBBLES, kind="histology", source="ours, after MedMNIST-C bubble (Di Salvo et al. 2024)")
def bubbles(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Air bubbles: inside each disc (radius R px at 224, centre uniform, union of discs, soft edge
    ``m = clip(R + 0.5 - d, 0, 1)``) the content is defocused (Gaussian, sigma 3 px at 224) and
    whitened, ``y = (1 - m) x + m ((1 - 0.4) blur(x) + 0.4)``; a bright rim at d = R,
    ``g = exp(-((d - R) / w)^2)``, w = 2 px at 224, whitens ``y + 0.5 g (1 - y)``. Convex mixes:
    no clip. (count, R) = (1, 20), (2, 25), (3, 30), (4, 35), (6, 40)."""
    count, radius = BUBBLES[severity - 1]
    s = size_scale(x)
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    centre = rand((b, BUBBLES[-1][0], 2), gen, x)[:, :count] * torch.tensor([h - 1, w - 1], device=x.device)
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w)
    d = torch.sqrt((rows - centre[..., 0, None, None]) ** 2 + (cols - centre[..., 1, None, None]) ** 2)
    r = radius * s
    inside = (r + 0.5 - d).clamp(0, 1).amax(1, keepdim=True)
    rim = torch.exp(-(((d - r) / max(BUBBLE_RIM_WIDTH * s, 0.5)) ** 2)).amax(1, keepdim=True)
    y = (1 - inside) * x + inside * ((1 - BUBBLE_FILL) * gaussian_blur(x, BUBBLE_BLUR * s) + BUBBLE_FILL)
    return y + BUBBLE_RIM * rim * (1 - y)
