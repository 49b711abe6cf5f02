"""Complexity metrics vs numpy formulas, analytic cases and Quantus 0.6.0 fed one sample at a time
(its normalise_by_max divides the whole batch by one maximum)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _metrics_helpers import images, smooth_maps, tiny_cnn
from medxai.errors import InputError
from medxai.metrics import complexity, effective_complexity, sparseness, total_variation


def np_gini(a, normalise=True):
    v = np.abs(a.ravel()).astype(np.float64)
    if normalise and v.max() > 0:
        v = v / v.max()
    v = np.sort(v + 1e-7)
    n = v.size
    i = np.arange(1, n + 1)
    return ((2 * i - n - 1) * v).sum() / (n * v.sum())


def np_entropy(a):
    v = np.abs(a.ravel()).astype(np.float64)
    p = v / v.sum()
    return -(p * np.log(p + 1e-12)).sum()


def np_tv(a):
    a = a.astype(np.float64)
    span = a.max() - a.min()
    n = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    d = np.abs(np.diff(n, axis=0)).sum() + np.abs(np.diff(n, axis=1)).sum()
    h, w = a.shape
    return d / (h * (w - 1) + (h - 1) * w)


def np_effective(a, eps=1e-5):
    v = np.abs(a.ravel()).astype(np.float64)
    if v.max() > 0:
        v = v / v.max()
    return float((v > eps).sum())


@pytest.fixture(scope="module")
def maps():
    a = smooth_maps(5, 10, 14)
    a[2, 3:5, 4:6] = 0.0  # a few exact zeros
    a[3] = a[3] * 1e-4  # a small-scale map
    return a


def test_equal_numpy_formulas(maps):
    an = maps.double().numpy()
    np.testing.assert_allclose(sparseness(maps).double(), [np_gini(m) for m in an], rtol=1e-5)
    np.testing.assert_allclose(sparseness(maps, normalise=False).double(), [np_gini(m, False) for m in an], rtol=1e-5)
    np.testing.assert_allclose(complexity(maps).double(), [np_entropy(m) for m in an], rtol=1e-6)
    np.testing.assert_allclose(total_variation(maps).double(), [np_tv(m) for m in an], rtol=1e-6)
    np.testing.assert_allclose(effective_complexity(maps).double(), [np_effective(m) for m in an])


def test_analytic_cases():
    n = 64
    uniform = torch.ones(1, 8, 8)
    onehot = torch.zeros(1, 8, 8)
    onehot[0, 3, 4] = 1.0
    assert sparseness(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert sparseness(onehot).item() == pytest.approx(1 - 1 / n, abs=1e-5)
    assert complexity(uniform).item() == pytest.approx(math.log(n), rel=1e-6)
    assert complexity(onehot).item() == pytest.approx(0.0, abs=1e-9)
    assert effective_complexity(onehot).item() == 1.0
    assert total_variation(uniform).item() == 0.0  # constant map: smooth
    check = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    assert total_variation(check[None].float()).item() == pytest.approx(1.0)  # every neighbour differs by 1
    assert torch.isnan(complexity(torch.zeros(1, 8, 8))).all()  # entropy of nothing: NaN


def _quantus_one_at_a_time(metric_cls, a):
    x = images(1, 1, *a.shape[-2:]).numpy()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = metric_cls(disable_warnings=True, display_progressbar=False, normalise=True, abs=True)
        for i in range(a.shape[0]):
            ai = a[i : i + 1, None].double().numpy().copy()
            out.append(m(model=tiny_cnn(), x_batch=x, y_batch=np.zeros(1, int), a_batch=ai, device="cpu")[0])
    return np.asarray(out, dtype=np.float64)


def test_equal_quantus_per_sample_and_batch_independent(maps):
    import quantus

    np.testing.assert_allclose(_quantus_one_at_a_time(quantus.Sparseness, maps), sparseness(maps).double(), rtol=1e-5)
    np.testing.assert_allclose(_quantus_one_at_a_time(quantus.Complexity, maps), complexity(maps).double(), rtol=1e-5)
    np.testing.assert_allclose(_quantus_one_at_a_time(quantus.EffectiveComplexity, maps),
                               effective_complexity(maps).double())
    # Quantus on the whole batch normalises by one maximum: the small-scale map's score changes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = quantus.Sparseness(disable_warnings=True, display_progressbar=False, normalise=True, abs=True)
        batch = m(model=tiny_cnn(), x_batch=images(5, 1, 10, 14).numpy(), y_batch=np.zeros(5, int),
                  a_batch=maps[:, None].double().numpy().copy(), device="cpu")
    assert abs(batch[3] - float(sparseness(maps)[3])) > 1e-3
    # ours: the same per sample whatever the batch
    for fn in (sparseness, complexity, effective_complexity, total_variation):
        full = fn(maps)
        torch.testing.assert_close(torch.cat([fn(maps[i : i + 1]) for i in range(5)]), full, rtol=0, atol=0,
                                   equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_scale_and_batch_invariance(seed, scale):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 6, 7, generator=g, dtype=torch.float64)
    for fn in (sparseness, complexity, effective_complexity, total_variation):
        base = fn(a)
        torch.testing.assert_close(fn(a * scale), base, rtol=1e-6, atol=1e-9)  # per-map normalisation
        other = torch.cat([a[:1], torch.randn(2, 6, 7, generator=g, dtype=torch.float64) * 1e4])
        torch.testing.assert_close(fn(other)[0], base[0], rtol=0, atol=0)


def test_input_contract_and_untouched(maps):
    a0 = maps.clone()
    for fn in (sparseness, complexity, effective_complexity, total_variation):
        fn(maps)
        fn(maps[:, None])  # (B, 1, H, W) is accepted
        with pytest.raises(InputError, match="channels"):
            fn(torch.rand(2, 3, 5, 5))
    assert torch.equal(maps, a0)
