"""ROAD imputation accuracy modes: the 1/255 default (float32 CG, max-norm update rule) and the exact one."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve

from medxai.errors import InputError
from medxai.metrics.imputation import PIXEL_TOL, linear_imputation

H = W = 12


def _grid_weights(h: int, w: int) -> sp.csr_matrix:
    """The 8-neighbour weights of the whole h x w grid (1/6 direct, 1/12 diagonal) as Kronecker sums."""
    th = sp.diags([1.0, 1.0], [-1, 1], shape=(h, h))
    tw = sp.diags([1.0, 1.0], [-1, 1], shape=(w, w))
    direct = sp.kron(sp.identity(h), tw) + sp.kron(th, sp.identity(w))
    return (direct / 6.0 + sp.kron(th, tw) / 12.0).tocsr()


def _spsolve(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """x (C, h, w), removed (h, w): (D - W)[R, R] u = W[R, K] x_K by scipy's direct solver."""
    c, h, w = x.shape
    wg = _grid_weights(h, w)
    r, k = np.flatnonzero(removed.ravel()), np.flatnonzero(~removed.ravel())
    a = (sp.diags(np.asarray(wg.sum(1)).ravel()) - wg).tocsr()[r][:, r].tocsc()
    out = x.reshape(c, -1).copy()
    for ch in range(c):
        out[ch, r] = spsolve(a, wg[r][:, k] @ out[ch, k])
    return out.reshape(c, h, w)


def _masks() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rnd = torch.rand(3, H, W, generator=g)
    blob = torch.nn.functional.interpolate(torch.rand(1, 1, 3, 3, generator=g), size=(H, W), mode="bilinear")[0]
    stripes_v = torch.zeros(H, W, dtype=torch.bool)
    stripes_v[:, ::2] = True  # one-pixel-wide columns
    stripes_h = torch.zeros(H, W, dtype=torch.bool)
    stripes_h[1::2, :] = True
    return torch.stack([rnd[0] < 0.1, rnd[1] < 0.5, rnd[2] < 0.9,  # 10, 50, 90 % removed at random
                        blob[0] > blob.flatten().quantile(0.1),  # one 90 % blob
                        stripes_v, stripes_h, stripes_v & ~stripes_h])


def test_fast_default_within_half_grey_level_and_exact_equals_spsolve():
    rm = _masks()
    x = torch.rand(len(rm), 2, H, W, generator=torch.Generator().manual_seed(1))
    fast = linear_imputation(x, rm)  # float32 input: the 1/255 default
    exact = linear_imputation(x, rm, tol="exact")
    assert fast.dtype == exact.dtype == torch.float32
    assert float(rm[2].float().mean()) > 0.85 and float(rm[3].float().mean()) >= 0.89
    for i in range(len(rm)):
        want = _spsolve(x[i].double().numpy(), rm[i].numpy())
        assert np.abs(fast[i].double().numpy() - want).max() < PIXEL_TOL
        assert np.abs(exact[i].double().numpy() - want).max() < 1e-6
    assert float((fast - exact).abs().max()) < PIXEL_TOL
    assert torch.equal(fast[~rm[:, None].expand_as(x)], x[~rm[:, None].expand_as(x)])


@pytest.mark.parametrize("tol", [0.05, 0.01, PIXEL_TOL])
def test_update_rule_bounds_the_error_on_a_large_hole(tol):
    g = torch.Generator().manual_seed(2)
    a = torch.nn.functional.interpolate(torch.rand(3, 1, 4, 4, generator=g), size=(48, 48), mode="bilinear")[:, 0]
    rm = a > a.flatten(1).quantile(torch.tensor([0.1, 0.5, 0.7]), dim=1).diagonal()[:, None, None]
    x = torch.rand(3, 1, 48, 48, generator=g, dtype=torch.float64)
    exact = linear_imputation(x, rm)  # float64 input: exact by default
    fast = linear_imputation(x, rm, tol=tol)
    assert fast.dtype == torch.float64
    err = float((fast - exact).abs().max())
    assert 0 < err < tol  # a looser tol is not exact (fewer iterations) and still within tol
    np.testing.assert_allclose(linear_imputation(x, rm, rtol=1e-8).numpy(), exact.numpy(), rtol=0, atol=0)


def test_tolerance_arguments_are_checked():
    x = torch.rand(1, 1, H, W)
    rm = _masks()[:1]
    with pytest.raises(InputError, match="not both"):
        linear_imputation(x, rm, tol=0.01, rtol=1e-8)
    for bad in (0.0, -1.0, "fast"):
        with pytest.raises(InputError, match="tol must be"):
            linear_imputation(x, rm, tol=bad)
