"""Light leakage (ours, definitions.md section 3): its formula, and its glow at the rim of the
field of view of scikit-image's real fundus photograph."""

import math

import numpy as np
import pytest
import torch

from medxai.corruptions import apply, example_fundus, field_of_view
from medxai.corruptions.fundus import COLOUR, KAPPA_MAX, LEAKAGE


def disc_image(size=64, cy=30.0, cx=34.0, radius=22.0):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    img = np.where(inside, 0.45, 0.0).astype(np.float32)
    return torch.from_numpy(np.stack([img * 1.2, img, img * 0.5]))[None]


def test_field_of_view_of_a_disc_and_fallback():
    cy, cx, r = field_of_view(disc_image())
    assert abs(float(cy) - 30) < 0.5 and abs(float(cx) - 34) < 0.5 and abs(float(r) - 22) < 0.5
    cy, cx, r = field_of_view(torch.full((1, 3, 20, 30), 0.5))  # no dark surround: inscribed circle
    assert (float(cy), float(cx), float(r)) == (9.5, 14.5, 10.0)


@pytest.mark.parametrize("severity", [1, 4])
def test_glow_equals_the_formula_with_the_seeded_draws(severity):
    x = disc_image()
    out = apply(x, "light_leakage", severity, seed=11)
    g = torch.Generator().manual_seed(11)
    theta = float(torch.rand(1, generator=g)) * 2 * math.pi
    kappa = float(torch.rand(1, generator=g)) * KAPPA_MAX
    amp, w = LEAKAGE[severity - 1]
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    cy, cx, radius = (float(v) for v in field_of_view(x))
    r = np.hypot(yy - cy, xx - cx) / radius
    phi = np.arctan2(yy - cy, xx - cx)
    glow = amp * np.exp(-(((1 - r) / w) ** 2)) * ((1 + np.cos(phi - theta)) / 2) ** kappa
    ref = np.clip(x[0].numpy() + glow[None] * np.asarray(COLOUR).reshape(3, 1, 1), 0, 1)
    assert np.abs(out[0].numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_light_leakage_lies_at_the_rim_of_the_real_fundus_image(seed):
    x = example_fundus(256)
    cy, cx, radius = (float(v) for v in field_of_view(x))
    assert abs(cy - 127.5) < 8 and abs(cx - 127.5) < 8 and 100 < radius < 135  # the photo's disc
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - cy, xx - cx) / radius
    for severity in range(1, 5):
        d = (apply(x, "light_leakage", severity, seed=seed) - x)[0].sum(0).numpy()
        energy = d**2
        share_rim = energy[(r > 0.75) & (r < 1.25)].sum() / energy.sum()
        mean_r = float((energy * r).sum() / energy.sum())
        hist, edges = np.histogram(r, bins=np.arange(0, 1.8, 0.1), weights=energy)
        peak = edges[int(hist.argmax())] + 0.05
        assert share_rim > 0.7 and 0.85 < mean_r < 1.15 and 0.8 < peak < 1.2, (severity, share_rim, mean_r, peak)
        assert float(d[r < 0.5].max()) < 0.15 * float(d.max())  # the centre of the retina is barely touched
