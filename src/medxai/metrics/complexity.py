"""Complexity: how concentrated, how simple, how smooth is a map (no model, no mask needed).

Maps (B, H, W) or (B, 1, H, W) -> (B,) on the maps' device and dtype; volumes (B, 1, D, H, W)
likewise, over voxels (total variation over the 6-neighbourhood). Every normalisation is
per map, never across the batch (Quantus 0.6.0's ``normalise_by_max`` uses one maximum for the
whole batch, so its scores depend on the other samples).
"""

from __future__ import annotations

import math

import torch

from medxai.metrics._common import minmax, nan_where, single_maps, sort_values
from medxai.metrics.registry import metric, on_maps

__all__ = ["complexity", "effective_complexity", "sparseness", "total_variation"]


def _abs_flat(maps: torch.Tensor, normalise: bool) -> torch.Tensor:
    a = single_maps(maps).reshape(maps.shape[0], -1).abs().to(torch.float64)
    if normalise:
        peak = a.amax(-1, keepdim=True)
        a = a / torch.where(peak > 0, peak, torch.ones_like(peak))
    return a


@metric("sparseness", category="complexity", higher_is_better=True,
        reference="Chalasani et al. 2020, Concise explanations of neural networks using adversarial training "
                  "(ICML); Gini index", score=on_maps)
def sparseness(maps: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
    """Gini index of |a| + 1e-7: G = sum_i (2i - n - 1) a_(i) / (n sum a), a sorted ascending, i = 1..n.

    ``normalise``: divide |a| by its per-map maximum first (as Quantus does per sample); the
    1e-7 makes the score depend on scale only through this choice. 0 = uniform, -> 1 = one pixel.
    """
    # sort |a| in its own dtype (max-normalising and adding 1e-7 keep the order), sum in float64
    srt = sort_values(single_maps(maps).reshape(maps.shape[0], -1).abs()).to(torch.float64)
    if normalise:
        peak = srt[:, -1:]
        srt = srt / torch.where(peak > 0, peak, torch.ones_like(peak))
    a = srt + 1e-7
    n = a.shape[-1]
    i = torch.arange(1, n + 1, device=a.device, dtype=torch.float64)
    g = ((2 * i - n - 1) * a).sum(-1) / (n * a.sum(-1))
    return g.to(maps.dtype)


@metric("complexity", category="complexity", higher_is_better=False,
        reference="Bhatt et al. 2020, Evaluating and aggregating feature-based model explanations (IJCAI)",
        score=on_maps)
def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Entropy -sum p ln(p + 1e-12) of p = |a| / sum |a| (nats). NaN for an all-zero map."""
    a = _abs_flat(maps, normalise=False)
    total = a.sum(-1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -(p * torch.log(p + 1e-12)).sum(-1)
    return nan_where(total[:, 0] <= 0, h).to(maps.dtype)


@metric("effective_complexity", category="complexity", higher_is_better=False,
        reference="Nguyen & Martinez 2020, On quantitative aspects of model interpretability (arXiv:2007.07584)",
        score=on_maps)
def effective_complexity(maps: torch.Tensor, *, eps: float = 1e-5, normalise: bool = True) -> torch.Tensor:
    """Number of pixels with |a| > eps, after dividing |a| by its per-map maximum (``normalise``)."""
    return (_abs_flat(maps, normalise) > eps).sum(-1).to(maps.dtype)


@metric("total_variation", category="complexity", higher_is_better=False,
        reference="the adversarial-training study's smoothness score (anisotropic total variation)",
        score=on_maps)
def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between 4-neighbouring pixels of the per-map min-max normalised map.

    TV = (sum |a[i+1, j] - a[i, j]| + sum |a[i, j+1] - a[i, j]|) / (H (W - 1) + (H - 1) W), with
    a in [0, 1] per map (a constant map is all zeros: TV 0). Lower is smoother. Volumes: the
    same over the 6-neighbourhood, the sum of the three axes' differences over the number of
    neighbouring voxel pairs ((D - 1) H W + D (H - 1) W + D H (W - 1)).
    """
    sd = maps.ndim - 2 if maps.ndim == 5 else 2
    a = minmax(single_maps(maps).to(torch.float64), sd)
    sp = a.shape[1:]
    total = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    pairs = 0
    for ax in range(1, a.ndim):  # (D,) H, W in order
        total = total + a.diff(dim=ax).abs().flatten(1).sum(-1)
        pairs += math.prod(sp) // sp[ax - 1] * (sp[ax - 1] - 1)
    return (total / max(pairs, 1)).to(maps.dtype)
