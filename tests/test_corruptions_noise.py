"""Noise corruptions: their statistics match the tables."""

import torch

from medxai.corruptions import apply
from medxai.corruptions.noise import GAUSSIAN, IMPULSE, SHOT


def test_gaussian_noise_std_and_mean():
    x = torch.full((4, 3, 64, 64), 0.5)
    d = apply(x, "gaussian_noise", 2, seed=0) - x  # c = 0.12: clipping at 0/1 is > 4 sigma away
    assert abs(float(d.std()) - GAUSSIAN[1]) < 0.002 and abs(float(d.mean())) < 0.002


def test_shot_noise_is_poisson_counts_over_c():
    x = torch.full((4, 3, 64, 64), 0.4)
    c = SHOT[2]
    out = apply(x, "shot_noise", 3, seed=1)
    counts = out * c
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # integer photon counts
    assert abs(float(out.mean()) - 0.4) < 0.005
    assert abs(float(out.var()) - 0.4 / c) < 0.1 * 0.4 / c  # Poisson: var(N / c) = x / c


def test_impulse_noise_fractions_and_nested_sets():
    x = torch.full((4, 3, 64, 64), 0.5)
    prev = torch.zeros_like(x, dtype=torch.bool)
    for s, a in enumerate(IMPULSE, start=1):
        out = apply(x, "impulse_noise", s, seed=2)
        salt, pepper = out == 1, out == 0
        n = x.numel()
        assert abs(float(salt.sum()) / n - a / 2) < 0.01 and abs(float(pepper.sum()) / n - a / 2) < 0.01
        hit = salt | pepper
        assert bool((hit | ~prev).all())  # every pixel hit at a lower severity is hit again
        prev = hit
