"""Faithfulness metrics vs the per-sample procedures of their papers written here (RISE's causal
metric, ROAD with scipy's sparse solve) and Quantus 0.6.0 (RegionPerturbation, PixelFlipping, ROAD)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from _metrics_helpers import images, smooth_maps, spsolve_imputation, tiny_cnn
from medxai.errors import InputError
from medxai.metrics import deletion, insertion, pixel_flipping, region_perturbation, rise_blur, road


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(channels=3, classes=4, seed=1)
    with torch.no_grad():
        model[-1].weight.mul_(20.0)  # confident enough that perturbations move the output
    x = images(5, 3, 20, 20, seed=2)
    maps = smooth_maps(5, 20, 20, seed=3)
    return model, x, maps


# ---------------------------------------------------------------- RISE, written per sample

def rise_gkern(klen=11, nsig=5):
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return ndimage.gaussian_filter(inp, nsig)


def rise_single_run(model, img, sal, mode, step):
    """RISE's CausalMetric.single_run for one image (1, C, H, W) and saliency (H, W), with the
    ordering made stable (descending, ties to the lowest index)."""
    _, c, h, w = img.shape
    hw = h * w
    with torch.no_grad():
        cls = int(torch.softmax(model(img), 1).argmax())
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img.clone().numpy(), np.zeros_like(img.numpy())
    else:
        k = rise_gkern()
        blurred = np.stack([ndimage.convolve(img[0, ch].double().numpy(), k, mode="constant") for ch in range(c)])
        start, finish = blurred[None].astype(np.float32), img.clone().numpy()
    order = np.argsort(-sal.double().numpy().ravel(), kind="stable")
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = float(torch.softmax(model(torch.from_numpy(start)), 1)[0, cls])
        if i < n_steps:
            coords = order[step * i : step * (i + 1)]
            start.reshape(1, c, hw)[0, :, coords] = finish.reshape(1, c, hw)[0, :, coords]
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / n_steps


@pytest.mark.parametrize("mode", ["del", "ins"])
def test_deletion_insertion_equal_rise_procedure(setup, mode):
    model, x, maps = setup
    fn = deletion if mode == "del" else insertion
    res = fn(model, x, maps, steps=25)  # 400 px -> 16 px per step, 25 steps
    assert res.curve.shape == (5, 26)
    for i in range(5):
        curve, auc = rise_single_run(model, x[i : i + 1], maps[i], mode, 16)
        np.testing.assert_allclose(res.curve[i].double().numpy(), curve, atol=1e-6)
        assert abs(float(res.auc[i]) - auc) < 1e-6
    np.testing.assert_allclose(res.fraction[[0, 1, -1]].numpy(), [0, 16 / 400, 1.0])


def test_rise_blur_is_gkern_with_zero_padding(setup):
    _, x, _ = setup
    k = rise_gkern()
    want = np.stack([ndimage.convolve(x[0, c].double().numpy(), k, mode="constant") for c in range(3)])
    np.testing.assert_allclose(rise_blur(x)[0].double().numpy(), want, atol=1e-6)


def test_ties_batch_independence_and_model_restored(setup):
    model, x, maps = setup
    flat = torch.full((5, 20, 20), 0.25)  # every pixel ties: row-major order
    res = deletion(model, x, flat, target=2, step_size=30, output="logit")
    manual = x.clone()
    manual.view(5, 3, -1)[:, :, :30] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(res.curve[:, 1], model(manual)[:, 2])
    full = insertion(model, x, maps, steps=10)
    for i in (0, 3):
        one = insertion(model, x[i : i + 1], maps[i : i + 1], steps=10)
        torch.testing.assert_close(one.curve[0], full.curve[i], rtol=0, atol=1e-6)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x0, m0 = x.clone(), maps.clone()
    deletion(model, x, maps, steps=5)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched (eval inside)
    assert torch.equal(x, x0) and torch.equal(maps, m0)
    model.eval()


# ---------------------------------------------------------------- Quantus where it is right

def _q(metric, model, x, y, a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), device="cpu")


@pytest.mark.parametrize("size", [(24, 24), (20, 28)])
def test_region_perturbation_equals_quantus(size):
    import quantus

    h, w = size
    model = tiny_cnn(channels=1, classes=3, seed=4)
    x = images(4, 1, h, w, seed=5)
    a = smooth_maps(4, h, w, seed=6)
    y = torch.tensor([0, 1, 2, 1])
    res = region_perturbation(model, x, a, y, patch_size=8, regions=5)
    q = np.asarray(_q(quantus.RegionPerturbation(patch_size=8, regions_evaluation=5, normalise=False, abs=False,
                                                 disable_warnings=True, display_progressbar=False), model, x, y, a))
    np.testing.assert_allclose(res.curve[:, 1:].double().numpy(), q, atol=1e-5)
    assert torch.all(res.curve[:, 0] == 0)
    torch.testing.assert_close(res.auc, res.curve.mean(1))  # AOPC over k = 0..L


def test_pixel_flipping_equals_quantus():
    import quantus

    model = tiny_cnn(channels=1, classes=3, seed=7)
    x = images(3, 1, 12, 12, seed=8)
    a = smooth_maps(3, 12, 12, seed=9)
    y = torch.tensor([2, 0, 1])
    res = pixel_flipping(model, x, a, y, features_in_step=12)
    q = np.asarray(_q(quantus.PixelFlipping(features_in_step=12, normalise=False, abs=False, disable_warnings=True,
                                            display_progressbar=False), model, x, y, a))
    assert res.curve.shape == (3, 13)
    np.testing.assert_allclose(res.curve[:, 1:].double().numpy(), q, atol=1e-5)


# ---------------------------------------------------------------- ROAD

def test_road_equals_spsolve_procedure_and_quantus():
    import quantus

    model = tiny_cnn(channels=1, classes=3, seed=10)
    with torch.no_grad():
        model[-1].weight.mul_(30.0)
    x = images(4, 1, 16, 16, seed=11)
    a = smooth_maps(4, 16, 16, seed=12)
    y = torch.tensor([0, 1, 2, 0])
    pct = (10, 30, 50, 70, 90)
    res = road(model, x, a, y, percentages=pct, noise=0.0)
    order = np.argsort(-a.double().numpy().reshape(4, -1), axis=1, kind="stable")
    for i in range(4):
        for j, p in enumerate(pct):
            rm = np.zeros(256, bool)
            rm[order[i, : int(256 * p / 100)]] = True
            xi = torch.from_numpy(spsolve_imputation(x[i].double().numpy(), rm.reshape(16, 16))).float()[None]
            with torch.no_grad():
                prob = torch.softmax(model(xi), 1)[0]
            assert abs(float(res.probability[i, j]) - float(prob[y[i]])) < 1e-5
            assert float(res.correct[i, j]) == float(prob.argmax() == y[i])
    m = quantus.ROAD(percentages=list(pct), noise=0.0, normalise=False, abs=False, disable_warnings=True,
                     display_progressbar=False)
    q = _q(m, model, x, y, a)
    np.testing.assert_allclose([q[p] for p in pct], res.correct.mean(0).double().numpy())
    assert res.correct.mean() < 1  # the check is not vacuous


def test_road_three_channels_where_quantus_crashes():
    import quantus

    model = tiny_cnn(channels=3, classes=3, seed=13)
    x = images(2, 3, 12, 12, seed=14)
    a = smooth_maps(2, 12, 12, seed=15)
    y = torch.tensor([1, 2])
    with pytest.raises(Exception):  # noqa: B017 - whatever Quantus 0.6.0 raises on 3 channels
        _q(quantus.ROAD(percentages=[20], noise=0.0, normalise=False, abs=False, disable_warnings=True,
                        display_progressbar=False), model, x, y, a)
    res = road(model, x, a, y, percentages=(20, 60), noise=0.0)
    order = np.argsort(-a.double().numpy().reshape(2, -1), axis=1, kind="stable")
    for i in range(2):
        rm = np.zeros(144, bool)
        rm[order[i, : int(144 * 60 / 100)]] = True
        xi = torch.from_numpy(spsolve_imputation(x[i].double().numpy(), rm.reshape(12, 12))).float()[None]
        with torch.no_grad():
            assert abs(float(torch.softmax(model(xi), 1)[0, y[i]]) - float(res.probability[i, 1])) < 1e-5


def test_road_options_noise_seed_and_batch_independence():
    model = tiny_cnn(channels=1, classes=3, seed=16)
    x = images(3, 1, 16, 16, seed=17)
    a = smooth_maps(3, 16, 16, seed=18)
    r1 = road(model, x, a, percentages=(20, 50), seed=3)
    r2 = road(model, x, a, percentages=(20, 50), seed=3)
    torch.testing.assert_close(r1.probability, r2.probability, rtol=0, atol=0)
    one = road(model, x[2:], a[2:], percentages=(20, 50), seed=3)
    torch.testing.assert_close(one.probability[0], r1.probability[2], rtol=0, atol=1e-6)
    r3 = road(model, x, a, percentages=(20, 50), seed=4)
    assert not torch.equal(r1.probability, r3.probability)
    lerf = road(model, x, a, percentages=(20, 50), order="lerf", imputation="mean", noise=0.0)
    # LeRF with mean imputation, by hand
    ranks = torch.argsort(torch.argsort(a.reshape(3, -1), dim=1, stable=True), dim=1, stable=True)
    rm = (ranks < int(256 * 0.5)).reshape(3, 1, 16, 16)
    manual = torch.where(rm, x.mean((2, 3), keepdim=True).expand_as(x), x)
    with torch.no_grad():
        want = torch.softmax(model(manual), 1).gather(1, lerf.targets[:, None])[:, 0]
    torch.testing.assert_close(lerf.probability[:, 1], want)
    with pytest.raises(InputError):
        road(model, x, a, imputation="zeros")
    with pytest.raises(InputError):
        road(model, x, a, percentages=(120,))


# ---------------------------------------------------------------- ties, random draws per sample, out of memory

def test_region_and_road_ties_and_per_sample_random_draws(setup):
    model, x, maps = setup
    flat = torch.full((5, 20, 20), 0.5)  # every pixel ties
    # a zero map: every patch sum ties. 20 px -> a 3 x 3 grid of 8 px patches centred (offset 2), cut at the
    # border: patch 0 (the first in row-major order) = rows and columns 0..5
    res = region_perturbation(model, x, torch.zeros(5, 20, 20), target=1, patch_size=8, regions=2, output="logit")
    manual = x.clone()
    manual[:, :, :6, :6] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(res.curve[:, 1], model(x)[:, 1] - model(manual)[:, 1])
    lerf = road(model, x, flat, target=1, percentages=(10,), order="lerf", imputation="mean", noise=0.0)
    morf = road(model, x, flat, target=1, percentages=(10,), order="morf", imputation="mean", noise=0.0)
    torch.testing.assert_close(lerf.probability, morf.probability)  # all tied: both take the first 40 pixels
    for kw in ({"order": "random"}, {"baseline": "uniform"}):
        full = region_perturbation(model, x, maps, patch_size=4, regions=6, seed=7, **kw)
        for i in (0, 4):
            one = region_perturbation(model, x[i : i + 1], maps[i : i + 1], patch_size=4, regions=6, seed=7, **kw)
            torch.testing.assert_close(one.curve[0], full.curve[i], rtol=0, atol=1e-6)
        other = region_perturbation(model, x, maps, patch_size=4, regions=6, seed=8, **kw)
        assert not torch.allclose(other.curve, full.curve)


class _OOMAbove(torch.nn.Module):
    """Raises the real ``torch.OutOfMemoryError`` when a forward gets more than ``limit`` images."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {x.shape[0]} > {self.limit})")
        return self.inner(x)


def test_scores_adapt_to_out_of_memory(setup, caplog):
    model, x, maps = setup
    ref_del = deletion(model, x, maps, steps=10, batch_size=64)
    ref_road = road(model, x, maps, percentages=(20, 50), seed=1, batch_size=64)
    limited = _OOMAbove(model, 7)
    with caplog.at_level("WARNING", logger="medxai"):
        got_del = deletion(limited, x, maps, steps=10, batch_size=64)
        got_road = road(limited, x, maps, percentages=(20, 50), seed=1, batch_size=64)
    torch.testing.assert_close(got_del.curve, ref_del.curve, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_road.probability, ref_road.probability, rtol=1e-5, atol=1e-6)
    assert max(limited.sizes) > 7  # it did run out of memory ...
    warned = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert warned and all(r.name.startswith("medxai") for r in caplog.records if "out of memory" in r.getMessage())
    assert model.training is False and all(p.requires_grad for p in model.parameters())
