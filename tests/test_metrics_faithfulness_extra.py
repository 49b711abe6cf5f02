"""Faithfulness correlation, monotonicity correlation, IROF, selectivity and sufficiency vs Quantus
0.6.0 on shared inputs (its random draws replayed and injected), analytic cases, per-sample
independence from the batch, the registry adapters, and the model left as it was."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from _metrics_helpers import images, smooth_maps, tiny_cnn
from _metrics_helpers import quantus as load_quantus
from medxai.errors import InputError
from medxai.metrics import METRICS, ScoreContext
from medxai.metrics.faithfulness_extra import (
    faithfulness_correlation,
    irof,
    monotonicity_correlation,
    pearson,
    selectivity,
    slic_segments,
    sufficiency,
)


def _q(metric, model, x, y, a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                                 device="cpu", **kw), dtype=np.float64)


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(channels=1, classes=3, seed=1)
    with torch.no_grad():
        model[-1].weight.mul_(10.0)
    x = images(4, 1, 12, 12, seed=2)  # every image has an exact 0: Quantus' "black" = 0
    a = smooth_maps(4, 12, 12, seed=3)
    y = torch.tensor([0, 1, 2, 1])
    return model, x, a, y


# ---------------------------------------------------------------- faithfulness correlation

def test_faithfulness_correlation_equals_quantus(setup):
    quantus = load_quantus()
    model, x, a, y = setup
    runs, k = 10, 20
    np.random.seed(0)  # noqa: NPY002 - replays Quantus' global RNG
    q = _q(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=k, normalise=False, abs=False,
                                           return_aggregate=False, disable_warnings=True), model, x, y, a)
    np.random.seed(0)  # noqa: NPY002 - replay Quantus' draws: per run, one choice per sample, then its unused 'uniform' fill
    idx = np.zeros((4, runs, k), dtype=np.int64)
    for r in range(runs):
        for i in range(4):
            idx[i, r] = np.random.choice(144, k, replace=False)  # noqa: NPY002 - replays Quantus' global RNG
        np.random.uniform(size=4)  # noqa: NPY002 - replays Quantus' global RNG
    ours = faithfulness_correlation(model, x, a, y, subsets=torch.from_numpy(idx))
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)
    assert np.ptp(q) > 0.1  # not a degenerate comparison


def test_faithfulness_correlation_is_one_for_a_linear_model_and_gradient_x_input():
    """f(x) = w.x + b, a = w * x (gradient x input), baseline 0: the drop f(x) - f(x_S) equals the
    summed attribution on S for every subset (Bhatt et al.'s mu_F), so the correlation is 1."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 3)).double().eval()
    x = images(3, 1, 10, 10, seed=4, dtype=torch.float64)
    t = torch.tensor([0, 2, 1])
    maps = model[1].weight[t].detach().reshape(3, 10, 10) * x[:, 0]
    r = faithfulness_correlation(model, x, maps, t, subset_size=15, runs=12, seed=3)
    np.testing.assert_allclose(r.numpy(), 1.0, atol=1e-12)
    anti = faithfulness_correlation(model, x, -maps, t, subset_size=15, runs=12, seed=3)
    np.testing.assert_allclose(anti.numpy(), -1.0, atol=1e-12)


def test_faithfulness_correlation_per_sample_seeds_and_refusals(setup):
    model, x, a, y = setup
    full = faithfulness_correlation(model, x, a, y, subset_size=12, runs=8, seed=5)
    for i in (0, 3):
        one = faithfulness_correlation(model, x[i : i + 1], a[i : i + 1], y[i : i + 1], subset_size=12, runs=8, seed=5)
        # float32 model: a one-image and a batched forward round differently (1.3e-6 seen on some CPUs' kernels)
        torch.testing.assert_close(one[0], full[i], rtol=0, atol=1e-5)
    other = faithfulness_correlation(model, x, a, y, subset_size=12, runs=8, seed=6)
    assert not torch.allclose(other, full)
    with pytest.raises(InputError):
        faithfulness_correlation(model, x, a, y, subset_size=1000)
    with pytest.raises(InputError):
        faithfulness_correlation(model, x, a, y, subsets=torch.full((4, 3, 2), 999))
    x_const = torch.zeros_like(x)  # baseline = image: no drop at all, correlation undefined
    assert torch.isnan(faithfulness_correlation(model, x_const, a, y, subset_size=12, runs=5)).all()
    np.testing.assert_allclose(pearson(torch.tensor([[1.0, 2, 4]]), torch.tensor([[2.0, 4, 8]])).numpy(), 1.0)


# ---------------------------------------------------------------- monotonicity correlation

def test_monotonicity_correlation_equals_quantus(setup):
    quantus = load_quantus()
    model, x, a, y = setup
    fis, ns = 16, 3
    np.random.seed(0)  # noqa: NPY002 - replays Quantus' global RNG
    q = _q(quantus.MonotonicityCorrelation(nr_samples=ns, features_in_step=fis, normalise=False, abs=False,
                                           disable_warnings=True), model, x, y, a)
    np.random.seed(0)  # noqa: NPY002 - replay: one uniform fill per image, per group and sample
    vals = np.zeros((4, 144 // fis, ns))
    for g in range(144 // fis):
        for k in range(ns):
            vals[:, g, k] = np.random.uniform(0, 1, size=4)  # noqa: NPY002 - replays Quantus' global RNG
    ours = monotonicity_correlation(model, x, a, y, features_in_step=fis, nr_samples=ns,
                                    values=torch.from_numpy(vals).float())
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-5)


def test_monotonicity_correlation_is_one_when_attribution_tracks_the_variance():
    """Linear logit f = w.x + b on a constant image x = 1/2 with the same draws v for every pixel:
    var_i = w_i^2 mean_k (v_k - 1/2)^2 / f^2, so a = w^2 ranks the pixels exactly as var (Nguyen & Martinez)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).double().eval()
    x = torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64)
    t = torch.tensor([0, 1])
    a = model[1].weight[t].detach().square().reshape(2, 8, 8)
    vals = torch.tensor([0.1, 0.9, 0.3], dtype=torch.float64).expand(2, 64, 3)
    r = monotonicity_correlation(model, x, a, t, output="logit", values=vals)
    np.testing.assert_allclose(r.numpy(), 1.0, atol=1e-12)
    full = monotonicity_correlation(model, x, a, t, nr_samples=4, features_in_step=4, seed=2)
    one = monotonicity_correlation(model, x[1:], a[1:], t[1:], nr_samples=4, features_in_step=4, seed=2)
    torch.testing.assert_close(one[0], full[1], rtol=0, atol=1e-9)
    with pytest.raises(InputError):
        monotonicity_correlation(model, x, a, t, features_in_step=5)


# ---------------------------------------------------------------- IROF

def test_irof_curve_equals_quantus_with_a_constant_baseline(setup):
    """Quantus' IROF = N - trapz(curve[1:]) (its 'mean' fill is batch-global and is not followed);
    with baseline 0 its curve is ours; ours is the area over the curve on [0, 1]."""
    quantus = load_quantus()
    model, x, a, y = setup
    q = _q(quantus.IROF(perturb_baseline=0.0, normalise=False, abs=False, return_aggregate=False,
                        disable_warnings=True), model, x, y, a)
    res = irof(model, x, a, y, baseline=0.0)
    seg = slic_segments(x)
    for i in range(4):
        n = len(torch.unique(seg[i]))
        c = res.curve[i, : n + 1].numpy()
        assert abs(q[i] - (n - np.trapezoid(c[1:]))) < 1e-4  # float32 outputs summed over the segments (2.7e-5 seen)
        assert abs(float(res.auc[i]) - (1 - np.trapezoid(c, dx=1 / n))) < 1e-9
    assert torch.all(res.curve[:, 0] == 1)


def test_quantus_irof_mean_fill_depends_on_the_batch_and_ours_does_not(setup):
    """Quantus 0.6.0's "mean" fill is the mean of the whole perturbed batch (recomputed each step);
    it crashes on 3 channels (mask shape assert). Ours: the image's own mean, any channel count."""
    quantus = load_quantus()
    model, x, a, y = setup
    metric = quantus.IROF(normalise=False, abs=False, return_aggregate=False, disable_warnings=True)
    full = _q(metric, model, x, y, a)
    alone = _q(metric, model, x[:1], y[:1], a[:1])
    assert abs(full[0] - alone[0]) > 1e-3
    ours_full = irof(model, x, a, y)
    torch.testing.assert_close(irof(model, x[:1], a[:1], y[:1]).auc[0], ours_full.auc[0], rtol=0, atol=1e-6)
    model3 = tiny_cnn(channels=3, classes=3, seed=5)
    x3 = images(2, 3, 8, 8, seed=6)
    with pytest.raises(AssertionError):
        _q(metric, model3, x3, y[:2], a[:2, :8, :8])
    assert torch.isfinite(irof(model3, x3, a[:2, :8, :8], y[:2]).auc).all()


def test_irof_by_hand_on_quadrant_segments_and_three_channels():
    """Four quadrant superpixels, removed in order of mean attribution, filled by the clean image's
    per-channel mean; the curve is f(x^k)/f(x) computed here image by image."""
    model = tiny_cnn(channels=3, classes=3, seed=5)
    x = images(2, 3, 8, 8, seed=6)
    seg = torch.zeros(2, 8, 8, dtype=torch.long)
    seg[:, :4, 4:], seg[:, 4:, :4], seg[:, 4:, 4:] = 1, 2, 3
    a = torch.zeros(2, 8, 8)
    means = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.0, 0.2, 0.8]])  # sample 1: tie 0.2, lowest label first
    for s in range(4):
        a[seg == s] = means[:, s].repeat_interleave(16)
    res = irof(model, x, a, torch.tensor([1, 2]), segments=seg)
    orders = [[1, 2, 3, 0], [3, 0, 2, 1]]
    for i in range(2):
        xi = x[i : i + 1].clone()
        fill = x[i].mean((1, 2))[:, None]
        with torch.no_grad():
            base = torch.softmax(model(xi), 1)[0, res.targets[i]]
            want = [1.0]
            for s in orders[i]:
                xi[0][:, seg[i] == s] = fill
                want.append(float(torch.softmax(model(xi), 1)[0, res.targets[i]] / base))
        np.testing.assert_allclose(res.curve[i].numpy(), want, atol=1e-6)
        assert abs(float(res.auc[i]) - (1 - np.trapezoid(want, dx=0.25))) < 1e-6
    with pytest.raises(InputError):
        irof(model, x, a, segments=seg[:, :4])


# ---------------------------------------------------------------- selectivity

@pytest.mark.parametrize("patch", [4, 5])
def test_selectivity_equals_quantus(setup, patch):
    quantus = load_quantus()
    model, x, a, y = setup
    q = _q(quantus.Selectivity(patch_size=patch, normalise=False, abs=False, disable_warnings=True), model, x, y, a)
    res = selectivity(model, x, a, y, patch_size=patch)
    np.testing.assert_allclose(res.curve[:, 1:].double().numpy(), q, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(res.curve[:, 0], torch.softmax(model(x), 1).gather(1, y[:, None])[:, 0])
    c = res.curve.double()
    torch.testing.assert_close(res.auc.double(), (c.sum(1) - c[:, 0] / 2 - c[:, -1] / 2) / (c.shape[1] - 1))


# ---------------------------------------------------------------- sufficiency

def test_sufficiency_equals_quantus_and_is_nan_without_neighbours():
    quantus = load_quantus()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    with torch.no_grad():  # class 0 for bright, 1 for dark, 2 for mid-grey images
        model[1].weight.copy_(torch.stack([torch.ones(64), -torch.ones(64), torch.zeros(64)]))
        model[1].bias.copy_(torch.tensor([-32.0, 32.0, 5.0]))
    grey = {0: 0.9, 1: 0.1, 2: 0.5}
    want_pred = [0, 1, 2, 0, 1, 0, 1, 0, 2, 2, 1]
    x = torch.tensor([grey[c] for c in want_pred]).reshape(11, 1, 1, 1).expand(11, 1, 8, 8)
    a = smooth_maps(11, 8, 8, seed=8)
    a[5:10] = a[:5] + 0.05 * smooth_maps(5, 8, 8, seed=9)  # pairs of near neighbours; sample 10 alone
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert pred.tolist() == want_pred
    seen_nan = seen_value = False
    for thr in (0.3, 0.9):
        q = _q(quantus.Sufficiency(threshold=thr, normalise=False, abs=True, disable_warnings=True), model, x, pred, a)
        ours = sufficiency(a, pred, threshold=thr)
        ok = ~torch.isnan(ours)
        np.testing.assert_allclose(ours[ok].numpy(), q[ok.numpy()], atol=1e-12)
        np.testing.assert_array_equal(q[~ok.numpy()], 0.0)  # Quantus: 0 where there is no neighbour
        seen_nan |= bool((~ok).any())
        seen_value |= bool((ours[ok] > 0).any() and (ours[ok] < 1).any())
    assert seen_nan and seen_value


def test_sufficiency_against_a_fixed_reference_is_per_sample():
    ref = smooth_maps(6, 8, 8, seed=10)
    ref_pred = torch.tensor([0, 0, 1, 1, 2, 2])
    q = torch.cat([ref[:3] + 0.01, smooth_maps(2, 8, 8, seed=11)])
    qp = torch.tensor([0, 1, 1, 2, 0])
    full = sufficiency(q, qp, reference_maps=ref, reference_predictions=ref_pred, threshold=0.5)
    for i in range(5):
        one = sufficiency(q[i : i + 1], qp[i : i + 1], reference_maps=ref, reference_predictions=ref_pred,
                          threshold=0.5)
        torch.testing.assert_close(one[0], full[i], equal_nan=True)
    # by hand: scipy's seuclidean distances to the reference, normalised by the reference's largest
    from scipy.spatial.distance import cdist

    r = ref.abs().reshape(6, -1).double().numpy()
    qq = q.abs().reshape(5, -1).double().numpy()
    var = np.var(np.vstack([r, r]), axis=0, ddof=1)
    d = cdist(qq, r, "seuclidean", V=var) / cdist(r, r, "seuclidean", V=var).max()
    for i in range(5):
        near = d[i] <= 0.5
        want = (ref_pred.numpy()[near] == int(qp[i])).mean() if near.any() else np.nan
        np.testing.assert_allclose(float(full[i]), want, atol=1e-12)
    with pytest.raises(InputError):
        sufficiency(q, qp, reference_maps=ref)


# ---------------------------------------------------------------- registry, batch independence, model untouched

def test_registry_adapters_and_model_restored(setup):
    model, x, a, y = setup
    opts = {"faithfulness_correlation": {"subset_size": 10, "runs": 6}, "monotonicity_correlation":
            {"features_in_step": 36, "nr_samples": 2}, "selectivity": {"patch_size": 6}}
    ctx = ScoreContext(maps=a, images=x, targets=y, model=model, options=opts)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("faithfulness_correlation", "monotonicity_correlation", "irof", "selectivity", "sufficiency"):
        info = METRICS.get(name)
        assert info.category == "faithfulness" and {"model", "images"} <= info.needs
        col = info.compute(ctx)[name]
        assert col.shape == (4,)
    direct = faithfulness_correlation(model, x, a, y, subset_size=10, runs=6)
    torch.testing.assert_close(METRICS.get("faithfulness_correlation").compute(ctx)["faithfulness_correlation"],
                               direct, equal_nan=True)
    torch.testing.assert_close(METRICS.get("selectivity").compute(ctx)["selectivity"],
                               selectivity(model, x, a, y, patch_size=6).auc)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    sel = selectivity(model, x, a, y, patch_size=4)
    one = selectivity(model, x[2:3], a[2:3], y[2:3], patch_size=4)
    torch.testing.assert_close(one.curve[0], sel.curve[2], rtol=0, atol=1e-6)
    ir = irof(model, x, a, y)
    one = irof(model, x[1:2], a[1:2], y[1:2])
    torch.testing.assert_close(one.auc[0], ir.auc[1], rtol=0, atol=1e-6)
