"""Depthwise filtering helpers (replicate padding, per-sample kernels) for the blur corruptions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device) -> torch.Tensor:
    """Normalised Gaussian taps at integer offsets -r..r, r = ceil(3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), replicate padding."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def conv_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' correlation with one odd (k, k) kernel for every channel, replicate padding."""
    r = (kernel.shape[-1] - 1) // 2
    c = x.shape[1]
    return F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), kernel.view(1, 1, *kernel.shape).expand(c, 1, -1, -1),
                    groups=c)


def shift_sum(x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i * x(p + o_i)`` with sub-pixel offsets (bilinear, border replicated).

    x (B, C, H, W); offsets (B, n, 2) in pixels as (dy, dx); weights (n,) or (B, n).
    """
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float32)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    weights = weights.expand(b, -1) if weights.ndim == 1 else weights
    out = torch.zeros_like(x)
    for i in range(offsets.shape[1]):
        dy = offsets[:, i, 0].view(b, 1, 1)
        dx = offsets[:, i, 1].view(b, 1, 1)
        # normalised coordinates for grid_sample (align_corners=True: -1 and 1 are pixel centres)
        grid = torch.stack([(gx + dx) / max(w - 1, 1) * 2 - 1, (gy + dy) / max(h - 1, 1) * 2 - 1], dim=-1)
        out = out + weights[:, i].view(b, 1, 1, 1) * F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                                                    align_corners=True)
    return out
