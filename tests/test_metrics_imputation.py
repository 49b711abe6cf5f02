"""ROAD's linear imputation solved in torch vs scipy's sparse direct solve and Quantus' implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _metrics_helpers import smooth_maps, spsolve_imputation
from medxai.errors import InputError
from medxai.metrics import linear_imputation, noisy_linear_imputation


def _masks(b, h, w, fractions, seed=0, blobby=True):
    g = torch.Generator().manual_seed(seed)
    a = smooth_maps(b, h, w, seed=seed) if blobby else torch.rand(b, h, w, generator=g)
    order = torch.argsort(a.reshape(b, -1), dim=1, descending=True, stable=True)
    rm = torch.zeros(b, h * w, dtype=torch.bool)
    for i, f in enumerate(fractions):
        rm[i, order[i, : int(h * w * f)]] = True
    return rm.reshape(b, h, w)


@pytest.mark.parametrize(("h", "w", "c", "blobby"), [(16, 16, 1, True), (23, 31, 3, True), (40, 40, 1, False)])
def test_equals_scipy_spsolve(h, w, c, blobby):
    g = torch.Generator().manual_seed(h * w)
    fr = (0.05, 0.3, 0.6, 0.95)
    x = torch.rand(len(fr), c, h, w, generator=g, dtype=torch.float64)
    rm = _masks(len(fr), h, w, fr, seed=h, blobby=blobby)
    got = linear_imputation(x, rm)
    for i in range(len(fr)):
        want = spsolve_imputation(x[i].numpy(), rm[i].numpy())
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-7, rtol=0)
    assert torch.equal(got[~rm[:, None].expand_as(x)], x[~rm[:, None].expand_as(x)])  # kept pixels bit-identical


def test_equals_quantus_with_noise_off():
    from quantus.functions.perturb_func import noisy_linear_imputation as q_imputation

    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rm = _masks(3, 24, 24, (0.1, 0.5, 0.9), seed=2)
    got = linear_imputation(x, rm)
    for i in range(3):
        idx = np.flatnonzero(rm[i].numpy().ravel())
        want = q_imputation(x[i].numpy(), idx, noise=0.0)
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-7)


def test_noise_and_edge_cases():
    x = torch.rand(2, 2, 10, 12, generator=torch.Generator().manual_seed(3))
    rm = _masks(2, 10, 12, (0.4, 0.7), seed=4)
    clean = linear_imputation(x, rm)
    g = torch.Generator().manual_seed(5)
    noisy = noisy_linear_imputation(x, rm, noise=0.01, generator=g)
    d = (noisy - clean)[rm[:, None].expand_as(x)]
    assert torch.all((noisy - clean)[~rm[:, None].expand_as(x)] == 0)
    assert 0.007 < float(d.std()) < 0.013 and abs(float(d.mean())) < 0.003
    assert x.dtype == noisy.dtype == torch.float32
    # nothing removed: unchanged; everything removed: nothing to interpolate from -> 0
    none = torch.zeros(2, 10, 12, dtype=torch.bool)
    assert torch.equal(linear_imputation(x, none), x)
    out = linear_imputation(x, ~none)
    assert torch.all(out == 0)
    # a single removed pixel in a corner: the renormalised mean of its 3 in-image neighbours
    one = torch.zeros(2, 10, 12, dtype=torch.bool)
    one[:, 0, 0] = True
    want = (x[:, :, 0, 1] / 6 + x[:, :, 1, 0] / 6 + x[:, :, 1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    torch.testing.assert_close(linear_imputation(x, one)[:, :, 0, 0], want)
    with pytest.raises(InputError):
        linear_imputation(x, rm.float())
    with pytest.raises(InputError):
        linear_imputation(x[0], rm)


def test_chunking_does_not_change_the_result():
    x = torch.rand(5, 1, 20, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    rm = _masks(5, 20, 20, (0.1, 0.3, 0.5, 0.7, 0.9), seed=7)
    a = linear_imputation(x, rm)
    b = linear_imputation(x, rm, max_pixels=400)  # one image per solve
    torch.testing.assert_close(a, b, rtol=0, atol=0)
