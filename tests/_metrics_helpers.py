"""Shared pieces of the metrics tests: a tiny CNN, inputs, and independent reference procedures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve
from torch import nn


def tiny_cnn(channels: int = 1, classes: int = 3, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """conv-relu-conv-relu-pool-linear with a BatchNorm, in eval mode, deterministic weights."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, classes),
    ).to(dtype)
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.1, 0.1)
        m[1].running_var.uniform_(0.5, 1.5)
    return m.eval()


def images(b: int, c: int, h: int, w: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Smooth-ish images in [0, 1] with an exact 0 in every image (Quantus' 'black' = per-image min)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g, dtype=dtype)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    x = (x - x.amin((1, 2, 3), keepdim=True)) / (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    return x


def smooth_maps(b: int, h: int, w: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Continuous (tie-free with probability 1) blobby maps (B, H, W), signed."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)
    a = torch.nn.functional.avg_pool2d(a, 5, 1, 2) + 1e-3 * torch.randn(b, 1, h, w, generator=g, dtype=torch.float64)
    return a[:, 0].to(dtype)


def spsolve_imputation(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation for one image x (C, H, W), removed (H, W): the sparse system
    d_i u_i - sum_{j removed} w_ij u_j = sum_{j kept} w_ij x_j built row by row, solved by scipy."""
    c, h, w = x.shape
    idx = np.flatnonzero(removed.ravel())
    n = len(idx)
    var = -np.ones(h * w, dtype=int)
    var[idx] = np.arange(n)
    rows, cols, vals = [], [], []
    b = np.zeros((n, c))
    diag = np.zeros(n)
    flat = removed.ravel()
    for i, f in enumerate(idx):
        r, col = divmod(int(f), w)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == dx == 0:
                    continue
                rr, cc = r + dy, col + dx
                if not (0 <= rr < h and 0 <= cc < w):
                    continue
                wt = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                diag[i] += wt
                j = rr * w + cc
                if flat[j]:
                    rows.append(i)
                    cols.append(var[j])
                    vals.append(-wt)
                else:
                    b[i] += wt * x[:, rr, cc]
    a = sp.csc_matrix((np.r_[vals, diag], (np.r_[rows, np.arange(n)], np.r_[cols, np.arange(n)])), shape=(n, n))
    sol = np.asarray(spsolve(a, b)).reshape(n, -1)
    out = x.astype(np.float64).reshape(c, -1).copy()
    out[:, idx] = sol.T
    return out.reshape(c, h, w)


def quantus():
    """Quantus 0.6.0 (skips the test if it is missing), with ``np.trapz`` restored: numpy 2 removed it
    and Quantus' IROF still calls it."""
    q = pytest.importorskip("quantus")
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # noqa: NPY201
    return q
