"""KernelSHAP and GradientSHAP: exact Shapley values on a linear model, the Shapley definition on a
CNN (brute force), shap's KernelExplainer and captum's KernelShap / GradientShap, batch independence,
seeds, (B, T) targets, no side effects."""

# captum draws from numpy's global generator: replaying it needs the legacy calls
# ruff: noqa: NPY002
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain import REGISTRY, GradientShap, KernelShap, coalitions, gradient_shap_from_draws, shapley_kernel


class Linear(nn.Module):
    """logit_k = sum_p W_kp x_p: Shapley value of a feature = its weighted sum of (x - baseline)."""

    def __init__(self, c: int = 1, h: int = 8, w: int = 8, k: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, c * h * w, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def _cnn(k: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, k)).double().eval()


def _x(b: int, c: int = 3, h: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, h, h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _blocks(h: int, cell: int) -> torch.Tensor:
    r = torch.arange(h)[:, None] // cell
    return (r * (h // cell) + r.T).long()


def _linear_shapley(model: Linear, x: torch.Tensor, feats: torch.Tensor, t: int, base: float = 0.0) -> torch.Tensor:
    contrib = (model.weight[t].detach().view(1, *x.shape[1:]) * (x - base)).sum(1)  # (B, H, W)
    return torch.stack([contrib[:, feats == j].sum(-1) for j in range(int(feats.max()) + 1)], 1)


def _brute_shapley(model: nn.Module, x1: torch.Tensor, feats: torch.Tensor, t: int) -> torch.Tensor:
    """phi_j = sum_S |S|! (M - |S| - 1)! / M! [f(S + j) - f(S)] (Shapley 1953; Lundberg & Lee eq. 8)."""
    m = int(feats.max()) + 1

    def f(s: tuple) -> float:
        keep = torch.zeros_like(feats, dtype=torch.bool)
        for j in s:
            keep |= feats == j
        with torch.no_grad():
            return float(model(x1 * keep)[0, t])

    phi = torch.zeros(m, dtype=torch.float64)
    for j in range(m):
        rest = [i for i in range(m) if i != j]
        for r in range(m):
            for s in itertools.combinations(rest, r):
                wgt = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
                phi[j] += wgt * (f((*s, j)) - f(s))
    return phi


def test_shapley_kernel_and_exact_enumeration():
    # Theorem 2: pi = (M - 1) / (C(M, k) k (M - k)); M = 4, k = 1: 3 / (4 * 3) = 0.25; k = 2: 3 / (6 * 4)
    np.testing.assert_allclose(shapley_kernel(4, torch.tensor([1, 2, 3])).numpy(), [0.25, 0.125, 0.25])
    z, _, exact = coalitions(4, 14, torch.Generator().manual_seed(0))
    assert exact and z.shape == (14, 4) and len({tuple(r.tolist()) for r in z}) == 14
    z, _, exact = coalitions(4, 13, torch.Generator().manual_seed(0))
    assert not exact and z.shape == (13, 4) and bool((z.sum(1) > 0).all() and (z.sum(1) < 4).all())
    # paired draws: the second half is the complement of the first
    z, _, _ = coalitions(10, 40, torch.Generator().manual_seed(0))
    assert torch.equal(z[20:], ~z[:20])


@pytest.mark.parametrize("cell,n_samples", [(4, 64), (2, 100)])  # 4 features exact, 16 sampled
def test_kernel_shap_linear_equals_exact_shapley(cell, n_samples):
    model = Linear().double()
    x = _x(2, c=1)
    feats = _blocks(8, cell)
    ks = KernelShap(model, n_samples=n_samples)
    res = ks.shap_values(x, 1, feature_mask=feats)
    assert bool(res.exact.all()) == (cell == 4)
    ref = _linear_shapley(model, x, feats, 1)
    np.testing.assert_allclose(res.values[:, 0].numpy(), ref.detach().numpy(), atol=1e-5)
    # the pixel map gives each pixel its feature's value
    amap = ks.attribute(x, 1, feature_mask=feats)
    assert amap.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(amap[:, 0].numpy(), ref.detach()[:, feats].numpy(), atol=1e-5)


def test_kernel_shap_per_channel_features():
    model = Linear(c=3).double()
    x = _x(1)
    feats = torch.stack([_blocks(8, 8) + c for c in range(3)])[None]  # one feature per channel: M = 3
    amap = KernelShap(model).attribute(x, 2, feature_mask=feats)
    assert amap.shape == (1, 3, 8, 8)
    ref = (model.weight[2].detach().view(3, 8, 8) * x[0]).sum((1, 2))  # each channel's exact Shapley value
    np.testing.assert_allclose(amap[0, :, 0, 0].numpy(), ref.numpy(), atol=1e-10)


def test_kernel_shap_baseline_in_pixel_units():
    model = Linear().double()
    x = _x(2, c=1)
    feats = _blocks(8, 4)
    res = KernelShap(model, baseline=0.5).shap_values(x, 0, feature_mask=feats)
    ref = _linear_shapley(model, x, feats, 0, base=0.5)
    np.testing.assert_allclose(res.values[:, 0].numpy(), ref.detach().numpy(), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(res.base_value[:, 0].numpy(), model(torch.full_like(x, 0.5))[:, 0].numpy())


def test_kernel_shap_cnn_equals_shapley_definition_and_efficiency():
    model = _cnn()
    x = _x(2)
    feats = _blocks(8, 4)  # M = 4: 14 coalitions, exact
    res = KernelShap(model, n_samples=20).shap_values(x, torch.tensor([1, 3]), feature_mask=feats)
    for b, t in ((0, 1), (1, 3)):
        np.testing.assert_allclose(res.values[b, 0].numpy(), _brute_shapley(model, x[b:b + 1], feats, t).numpy(),
                                   atol=1e-9)
    with torch.no_grad():
        tt = torch.tensor([[1], [3]])
        gap = model(x).gather(1, tt) - model(torch.zeros_like(x)).gather(1, tt)
    np.testing.assert_allclose(res.values.sum(-1).numpy(), gap.numpy(), atol=1e-10)


def test_kernel_shap_equals_shap_kernel_explainer():
    shap = pytest.importorskip("shap")
    model = _cnn()
    x = _x(1)
    feats = _blocks(8, 4).flatten()
    feats = torch.where(feats == 3, 2, feats).view(8, 8)  # 3 features, one of them large
    feats[0, 0] = 3  # and a one-pixel feature: M = 4

    def f(z: np.ndarray) -> np.ndarray:
        keep = torch.from_numpy(z).bool()[:, feats][:, None]
        with torch.no_grad():
            return model(x * keep).numpy()

    explainer = shap.KernelExplainer(f, np.zeros((1, 4)))
    ref = explainer.shap_values(np.ones((1, 4)), nsamples=2**4, silent=True)  # all coalitions
    ref = np.asarray(ref)  # (1, M, K) in shap >= 0.45
    ours = KernelShap(model, n_samples=14).shap_values(x, torch.arange(4)[None], feature_mask=feats).values[0]
    np.testing.assert_allclose(ours.numpy(), ref[0].T, atol=1e-5)  # (T, M) vs shap's (M, K)


def test_kernel_shap_agrees_with_captum():
    captum = pytest.importorskip("captum.attr")
    model = Linear(c=1, k=2).double()
    x = _x(1, c=1)
    feats = _blocks(8, 4)
    torch.manual_seed(0)
    c = captum.KernelShap(model).attribute(x, target=1, feature_mask=feats[None, None], n_samples=200,
                                           perturbations_per_eval=200)
    ours = KernelShap(model, n_samples=200).attribute(x, 1, feature_mask=feats)
    # a linear model: captum's regression is exact too (its float32 fit: 1e-4)
    np.testing.assert_allclose(ours.numpy(), c.numpy(), atol=1e-4)


def test_kernel_shap_cnn_statistically_agrees_with_captum_sampling():
    """captum samples coalitions (with replacement, endpoints weighted 1e6) and converges to the exact
    values ours enumerates: with 1500 samples its error is a few % of the largest value."""
    captum = pytest.importorskip("captum.attr")
    model = _cnn()
    x = _x(1)
    feats = _blocks(8, 4)
    torch.manual_seed(0)
    c = captum.KernelShap(model).attribute(x, target=2, feature_mask=feats[None, None], n_samples=1500,
                                           perturbations_per_eval=500)
    ours = KernelShap(model, n_samples=14).attribute(x, 2, feature_mask=feats)
    scale = float(ours.abs().max())
    assert float((ours - c[:, :1]).abs().max()) < 0.1 * scale


def test_kernel_shap_batch_independence_seed_and_multi_target():
    model = _cnn()
    x = _x(3)
    feats = _blocks(8, 2)  # 16 features: sampled coalitions
    ks = KernelShap(model, n_samples=40)
    t2 = torch.tensor([[0, 1], [2, 3], [1, 0]])
    multi = ks.attribute(x, t2, feature_mask=feats)
    assert multi.shape == (3, 2, 1, 8, 8)
    for j in range(2):
        torch.testing.assert_close(multi[:, j], ks.attribute(x, t2[:, j], feature_mask=feats), rtol=0, atol=1e-10)
    alone = ks.attribute(x[1:2], t2[1:2], feature_mask=feats)
    torch.testing.assert_close(alone, multi[1:2], rtol=0, atol=1e-10)
    small_chunks = KernelShap(model, n_samples=40, batch_size=7).attribute(x, t2, feature_mask=feats)
    torch.testing.assert_close(small_chunks, multi, rtol=0, atol=1e-10)
    torch.testing.assert_close(ks.attribute(x, t2, feature_mask=feats, seed=0), multi, rtol=0, atol=0)
    assert float((ks.attribute(x, t2, feature_mask=feats, seed=5) - multi).abs().max()) > 1e-6


def test_kernel_shap_slic_default_and_registry():
    model = _cnn()
    x = _x(1, h=24)
    ks = REGISTRY.get("kernel_shap")(model, n_samples=64)
    res = ks.shap_values(x, 0)
    assert int(res.n_features[0]) > 3  # SLIC superpixels
    with torch.no_grad():
        gap = model(x)[0, 0] - model(torch.zeros_like(x))[0, 0]
    assert abs(float(res.values[0, 0].sum() - gap)) < 1e-9  # efficiency holds exactly, sampled or not


def test_model_unchanged_after_raising_call():
    model = _cnn().train()
    flags = [p.requires_grad for p in model.parameters()]
    for m in (KernelShap(model, n_samples=8), GradientShap(model, n_samples=2)):
        with pytest.raises(InputError):
            m.attribute(_x(1), 9, **({"feature_mask": _blocks(8, 4)} if isinstance(m, KernelShap) else {}))
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
    with pytest.raises(InputError):
        KernelShap(model).attribute(_x(1), 0, feature_mask=torch.zeros(4, 4, dtype=torch.long))


# --------------------------------------------------------------------------- GradientSHAP

def test_gradient_shap_linear_completeness_exact():
    model = Linear(c=3).double()
    x = _x(2)
    pool = _x(5, seed=7)
    gs = GradientShap(model, n_samples=12)
    a = gs.attribute(x, 2, baseline=pool)
    idx, _, _ = gs.draws(x, 5)
    with torch.no_grad():
        expect = model(x)[:, 2] - model(pool[idx[:, 0]])[:, 2].mean()
    np.testing.assert_allclose(a.flatten(1).sum(1).numpy(), expect.numpy(), atol=1e-10)
    # a single constant baseline: sum = f(x) - f(baseline) whatever the alphas
    a = GradientShap(model, n_samples=3).attribute(x, 0, baseline=0.25)
    with torch.no_grad():
        np.testing.assert_allclose(a.flatten(1).sum(1).numpy(),
                                   (model(x)[:, 0] - model(torch.full_like(x, 0.25))[:, 0]).numpy(), atol=1e-10)


def _captum_draws(b: int, n: int, s: int, stdev: float, shape: tuple, seed: int):
    """Replay captum GradientShap's draws: np.random.choice (baselines), torch.normal (float32 noise),
    np.random.uniform (alphas), each over B * n sample-major entries."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    idx = torch.tensor(np.random.choice(s, n * b)).view(b, n).T
    noise = torch.normal(0, torch.tensor(stdev).repeat((b * n, *shape))).double().view(b, n, *shape).transpose(0, 1)
    alpha = torch.tensor(np.random.uniform(0.0, 1.0, b * n)).view(b, n).T
    return idx, alpha, noise


def test_gradient_shap_core_equals_captum_under_shared_draws():
    captum = pytest.importorskip("captum.attr")
    model = _cnn()
    x, pool = _x(3), _x(4, seed=9)
    t = torch.tensor([0, 3, 1])
    n, sd = 5, 0.05
    np.random.seed(3)
    torch.manual_seed(3)
    c = captum.GradientShap(model).attribute(x, pool, n_samples=n, stdevs=sd, target=t)
    idx, alpha, noise = _captum_draws(3, n, 4, sd, tuple(x.shape[1:]), 3)
    ours = gradient_shap_from_draws(model, x, t[:, None], pool[:, None], idx, alpha, noise, chunk=7)
    np.testing.assert_allclose(ours[:, 0].numpy(), c.detach().numpy(), atol=1e-10)


def test_gradient_shap_statistically_equals_captum():
    """Both are unbiased estimates of the same expectation: 8 independent runs of n = 8 draws each
    side; the difference of the means of each sample's total attribution is within 5 standard errors."""
    captum = pytest.importorskip("captum.attr")
    model = _cnn()
    x, pool = _x(2), _x(6, seed=4)
    t = torch.tensor([1, 2])
    ours, theirs = [], []
    for r in range(8):
        ours.append(GradientShap(model, n_samples=8, stdev=0.05, seed=r).attribute(x, t, baseline=pool).sum((1, 2, 3)))
        np.random.seed(r)
        torch.manual_seed(r)
        theirs.append(captum.GradientShap(model).attribute(x, pool, n_samples=8, stdevs=0.05, target=t)
                      .detach().sum((1, 2, 3)))
    o, c = torch.stack(ours), torch.stack(theirs)
    se = torch.sqrt(o.var(0) / 8 + c.var(0) / 8)
    assert bool(((o.mean(0) - c.mean(0)).abs() < 5 * se + 1e-9).all())


def test_gradient_shap_batch_independence_seed_targets_registry():
    model = _cnn()
    x, pool = _x(3), _x(4, seed=2)
    gs = REGISTRY.get("expected_gradients")(model, n_samples=6, stdev=0.1, seed=1)
    t2 = torch.tensor([[0, 1], [2, 3], [3, 3]])
    multi = gs.attribute(x, t2, baseline=pool)
    assert multi.shape == (3, 2, 3, 8, 8)
    for j in range(2):
        torch.testing.assert_close(multi[:, j], gs.attribute(x, t2[:, j], baseline=pool), rtol=0, atol=1e-12)
    torch.testing.assert_close(gs.attribute(x[2:], t2[2:], baseline=pool), multi[2:], rtol=0, atol=1e-12)
    torch.testing.assert_close(gs.attribute(x, t2, baseline=pool), multi, rtol=0, atol=0)
    other = gs.attribute(x, t2, baseline=pool, generator=torch.Generator().manual_seed(99))
    assert float((other - multi).abs().max()) > 1e-6
    with pytest.raises(InputError):
        gs.attribute(x, 0, baseline=torch.full((2, 3, 8, 8), 1.5))
