"""Blur corruptions: scipy's Gaussian filter, disk and streak kernels, resolution scaling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medxai.corruptions import apply
from medxai.corruptions.blur import DEFOCUS, GAUSSIAN_SIGMA, MOTION, disk_kernel


@pytest.mark.parametrize("size,severity", [(64, 2), (112, 5)])
def test_gaussian_blur_equals_scipy(size, severity):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    sigma = GAUSSIAN_SIGMA[severity - 1] * size / 224
    r = max(1, math.ceil(3 * sigma))
    ref = ndimage.gaussian_filter(x.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma), mode="nearest",
                                  radius=(0, 0, r, r))
    assert np.abs(apply(x, "gaussian_blur", severity).numpy() - ref).max() < 1e-5


def test_defocus_disk_kernel_and_impulse_response():
    k = disk_kernel(4.0, torch.device("cpu"))
    assert abs(float(k.sum()) - 1) < 1e-6 and torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    c = (k.shape[0] - 1) // 2
    assert float(k[c, c + 4]) > 0 and float(k[c, c + 5]) == 0  # radius 4 (soft edge up to 4.5)
    # on a constant image a normalised blur changes nothing
    flat = torch.full((1, 3, 40, 40), 0.3)
    assert torch.allclose(apply(flat, "defocus_blur", 5), flat, atol=1e-6)
    # impulse response: a disk of radius r = 10 * s px
    size = 224
    x = torch.zeros(1, 1, size, size)
    x[..., 112, 112] = 1.0
    out = apply(x, "defocus_blur", 5)[0, 0]
    ys, xs = torch.nonzero(out > 1e-3, as_tuple=True)
    radius = float(torch.sqrt((ys - 112.0) ** 2 + (xs - 112.0) ** 2).max())
    assert abs(radius - DEFOCUS[4][0]) <= 1.5, radius


def test_motion_blur_is_a_one_sided_streak_of_the_table_length():
    size = 224
    x = torch.zeros(1, 1, size, size)
    x[..., 112, 150] = 1.0
    out = apply(x, "motion_blur", 2, seed=0)[0, 0]
    assert abs(float(out.sum()) - 1) < 1e-4  # energy preserved away from the border
    ys, xs = torch.nonzero(out > 1e-4, as_tuple=True)
    # out(p) = sum_t k_t x(p + t u), u = (sin a, cos a), |a| <= 45 deg: the streak lies to the left
    assert int(xs.max()) <= 150 and int(xs.min()) < 150 - 10
    length = float(torch.sqrt((ys - 112.0) ** 2 + (xs - 150.0) ** 2).max())
    assert length <= 2 * MOTION[1][0] + 2
    # the angle: the direction of the mass centroid lies within 45 degrees of the -x axis
    w = out[ys, xs]
    dy, dx = float((w * (ys - 112.0)).sum()), float((w * (xs - 150.0)).sum())
    assert dx < 0 and abs(dy) <= abs(dx) + 1e-6


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur"])
def test_a_severity_looks_alike_at_64_and_256_px(name):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(1, 3, 8, 8, generator=g)
    big = F.interpolate(base, size=(256, 256), mode="bicubic", align_corners=True).clamp(0, 1)
    small = F.interpolate(big, size=(64, 64), mode="area")
    out_big = F.interpolate(apply(big, name, 3, seed=0), size=(64, 64), mode="area")
    out_small = apply(small, name, 3, seed=0)
    d_scaled = float((out_big - out_small).abs().mean())
    d_effect = float((out_small - small).abs().mean())
    assert d_scaled < 0.3 * d_effect, (d_scaled, d_effect)
