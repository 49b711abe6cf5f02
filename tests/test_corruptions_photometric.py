"""Photometric corruptions against independent numpy / scikit-image formulas."""

import itertools

import numpy as np
import pytest
import torch
from skimage.color import hsv2rgb, rgb2hsv

from medxai.corruptions import apply
from medxai.corruptions.photometric import BRIGHTNESS, CONTRAST, GAMMA, HAZE_T, OVER_EV, UNDER_EV


def rgb(n=3, size=12, seed=0):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0, :, :2, :2] = 0.0  # black pixels
    x[0, :, 2, 2] = 1.0
    return x


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_equals_imagenet_c_hsv_formula(severity):
    x = rgb()
    out = apply(x, "brightness", severity).numpy()
    for i in range(len(x)):
        hsv = rgb2hsv(x[i].permute(1, 2, 0).numpy().astype(np.float64))
        hsv[..., 2] = np.clip(hsv[..., 2] + BRIGHTNESS[severity - 1], 0, 1)
        ref = np.clip(hsv2rgb(hsv), 0, 1)
        assert np.abs(out[i].transpose(1, 2, 0) - ref).max() < 1e-5


def test_contrast_and_gamma_formulas():
    x = rgb()
    m = x.numpy().mean(axis=(2, 3), keepdims=True)
    ref = np.clip((x.numpy() - m) * CONTRAST[1] + m, 0, 1)
    assert np.abs(apply(x, "contrast", 2).numpy() - ref).max() < 1e-6
    assert np.abs(apply(x, "gamma", 4).numpy() - x.numpy() ** GAMMA[3]).max() < 1e-6


def _srgb_decode(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v):
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


@pytest.mark.parametrize("name,ev", [("underexposure", UNDER_EV), ("overexposure", OVER_EV)])
def test_exposure_multiplies_linear_intensity_by_two_to_ev(name, ev):
    x = rgb().double()
    for s in range(1, 5):
        ref = _srgb_encode(np.clip(_srgb_decode(x.numpy()) * 2.0 ** ev[s - 1], 0, 1))
        assert np.abs(apply(x, name, s).numpy() - ref).max() < 1e-6
    # EV +1 then -1 in linear light is the identity where nothing clipped
    dark = x * 0.4
    back = apply(apply(dark, "overexposure", 2), "underexposure", 2)
    assert torch.allclose(back, dark, atol=1e-6)


def test_haze_is_koschmieder_with_bounded_transmission_and_thickens_pointwise():
    x = rgb(size=32) * 0.9
    outs = [apply(x, "haze", s, seed=3) for s in range(1, 6)]
    for s, out in enumerate(outs, start=1):
        t = (1 - out) / (1 - x)  # out = x t + (1 - t)
        assert float(t.min()) >= HAZE_T[s - 1] - 0.1 - 1e-5 and float(t.max()) <= HAZE_T[s - 1] + 0.1 + 1e-5
        # one transmission map per image, shared by the channels
        assert float((t - t[:, :1]).abs().max()) < 1e-4
    for a, b in itertools.pairwise(outs):
        assert bool(((b - x).abs() >= (a - x).abs() - 1e-6).all())
