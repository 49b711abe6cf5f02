"""Integrated Gradients: analytic vector, captum agreement, chunking, baselines, adaptive mode."""

import importlib.util

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from scipy import ndimage
from torch import nn

from medxai.errors import InputError
from medxai.explain import IntegratedGradients
from medxai.explain.integrated_gradients import gaussian_blur, quadrature


class Cube(nn.Module):
    """f(u) = sum z^3 with z = 4u - 2: the [0, 1] input u is the affine image of z in [-2, 2]."""

    def forward(self, u):
        return ((4 * u - 2) ** 3).flatten(1).sum(1, keepdim=True)


def _cnn(act=nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), act(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), act(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 4)).eval()


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


# z = [0.5, -1, 2] <-> u = (z + 2) / 4; baseline z' = 0 <-> u' = 0.5 (IG is invariant under this map)
U = torch.tensor([[[[0.625, 0.25, 1.0]]]], dtype=torch.float64)


@pytest.mark.parametrize(("method", "n", "expected"), [
    ("gausslegendre", 2, [0.125, -1.0, 8.0]),
    ("gausslegendre", 50, [0.125, -1.0, 8.0]),
    ("riemann_right", 5, [0.165, -1.32, 10.56]),
    ("riemann_middle", 5, [0.12375, -0.99, 7.92]),
])
def test_analytic_vector(method, n, expected):
    attr, delta = IntegratedGradients(Cube(), n_steps=n, method=method).attribute(
        U, 0, baseline=0.5, return_convergence_delta=True)
    np.testing.assert_allclose(attr.flatten().numpy(), expected, rtol=1e-12, atol=1e-12)
    # f(x) - f(x') = 0.125 - 1 + 8 = 7.125
    np.testing.assert_allclose(delta.numpy(), [sum(expected) - 7.125], atol=1e-12)


def test_quadrature_definitions():
    a, w = quadrature(4, "riemann_left")
    np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(w, [0.25] * 4)
    t, ww = np.polynomial.legendre.leggauss(7)
    a, w = quadrature(7)
    np.testing.assert_allclose(a, (1 + t) / 2)
    np.testing.assert_allclose(w, ww / 2)
    with pytest.raises(InputError):
        quadrature(5, "riemann_trapezoid")


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_matches_captum(method):
    model = _cnn()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 12, 12)
    base = torch.rand(3, 3, 12, 12)
    t = torch.tensor([0, 3, 1])
    ours = IntegratedGradients(model, n_steps=16, method=method).attribute(x, t, baseline=base)
    ref = CaptumIG(model).attribute(x, baselines=base, target=t, n_steps=16, method=method)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_several_targets_one_pass_equals_separate_calls():
    model = Counting(_cnn())
    x = torch.rand(2, 3, 12, 12)
    ig = IntegratedGradients(model, n_steps=8, internal_batch_size=64)
    t2 = torch.tensor([[0, 2, 3], [1, 1, 0]])
    model.calls = 0
    both, delta = ig.attribute(x, t2, return_convergence_delta=True)
    calls_multi = model.calls
    model.calls = 0
    ig.attribute(x, t2[:, 0], return_convergence_delta=True)
    assert calls_multi == model.calls == 3  # clean forward, baseline forward, 16 path points in one chunk
    model.calls = 0
    ig.attribute(x, t2)
    assert model.calls == 1  # targets given, no delta: only the path points
    assert both.shape == (2, 3, 3, 12, 12) and delta.shape == (2, 3)
    for j in range(3):
        torch.testing.assert_close(both[:, j], ig.attribute(x, t2[:, j]), atol=1e-6, rtol=1e-6)
    # top_k takes the largest logits
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)[:, :2]
    torch.testing.assert_close(ig.attribute(x, top_k=2), ig.attribute(x, order), atol=0, rtol=0)


def test_chunked_equals_unchunked_and_delta_is_completeness():
    model = _cnn(nn.Softplus)
    torch.manual_seed(2)
    x = torch.rand(3, 3, 12, 12)
    full, d_full = IntegratedGradients(model, n_steps=20, internal_batch_size=10**6).attribute(
        x, 1, return_convergence_delta=True)
    for kw in ({"internal_batch_size": 7}, {"memory_budget": 1}):  # budget 1 byte -> one image per call
        part = IntegratedGradients(model, n_steps=20, **kw).attribute(x, 1)
        torch.testing.assert_close(part, full, atol=1e-7, rtol=1e-6)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(d_full, full.flatten(1).sum(1) - gap)
    assert float((d_full.abs() / gap.abs()).max()) < 1e-3  # smooth model, 20 Gauss-Legendre points


def test_uniform_baselines_are_seeded_and_averaged():
    model = _cnn()
    x = torch.rand(2, 3, 12, 12)
    ig = IntegratedGradients(model, n_steps=6, n_baselines=3, seed=5)
    bl = ig.baselines(x, torch.zeros(2, dtype=torch.long), "uniform")
    assert bl.shape == (3, 2, 3, 12, 12)
    torch.testing.assert_close(bl, ig.baselines(x, None, "uniform"), atol=0, rtol=0)
    assert not torch.equal(bl, IntegratedGradients(model, n_baselines=3, seed=6).baselines(x, None, "uniform"))
    avg, delta = ig.attribute(x, 2, baseline="uniform", return_convergence_delta=True)
    single = IntegratedGradients(model, n_steps=6)
    each = [single.attribute(x, 2, baseline=bl[s], return_convergence_delta=True) for s in range(3)]
    torch.testing.assert_close(avg, torch.stack([a for a, _ in each]).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(delta, torch.stack([d for _, d in each]).mean(0), atol=1e-5, rtol=1e-4)
    # a list of baselines is the same average; a (S, B, C, H, W) tensor too
    torch.testing.assert_close(single.attribute(x, 2, baseline=[bl[0], bl[1], bl[2]]), avg, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(single.attribute(x, 2, baseline=bl), avg, atol=1e-6, rtol=1e-5)


def test_blur_baseline_equals_scipy():
    x = torch.rand(2, 3, 32, 24, dtype=torch.float64)
    ig = IntegratedGradients(_cnn())
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 10, 10))
    np.testing.assert_allclose(ig.baselines(x, None, "blur")[0].numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(gaussian_blur(x, 2.5).numpy(), ndimage.gaussian_filter(x.numpy(), (0, 0, 2.5, 2.5)),
                               atol=1e-12)
    scaled = IntegratedGradients(_cnn(), blur_scaled=True).baselines(x, None, "blur")[0]
    np.testing.assert_allclose(scaled.numpy(), ndimage.gaussian_filter(x.numpy(), (0, 0, 10 * 32 / 224, 10 * 32 / 224)),
                               atol=1e-12)


def test_adversarial_baseline_is_the_attack_output():
    model = _cnn()
    x = torch.rand(2, 3, 12, 12)
    seen = {}

    def attack(xx, y):
        seen["y"] = y.clone()
        return (xx * 0.5).detach()

    ig = IntegratedGradients(model, n_steps=5)
    a = ig.attribute(x, torch.tensor([3, 1]), baseline=attack)
    assert seen["y"].tolist() == [3, 1]
    torch.testing.assert_close(a, ig.attribute(x, torch.tensor([3, 1]), baseline=x * 0.5), atol=0, rtol=0)
    with pytest.raises(InputError):
        ig.attribute(x, 0, baseline=lambda xx, y: xx * 2 + 0.5)  # out of [0, 1]


@pytest.mark.skipif(importlib.util.find_spec("medxai.attacks.pgd") is None, reason="medxai.attacks not built")
def test_pgd_baseline():
    from medxai.attacks.pgd import PGD

    model = _cnn()
    x = torch.rand(2, 3, 12, 12)
    pgd = PGD(model, eps=0.05, steps=3, seed=0)
    y = torch.tensor([0, 2])
    adv = pgd(x, y)
    ig = IntegratedGradients(model, n_steps=5)
    torch.testing.assert_close(ig.attribute(x, y, baseline=PGD(model, eps=0.05, steps=3, seed=0)),
                               ig.attribute(x, y, baseline=adv), atol=1e-6, rtol=1e-5)


def test_adaptive_meets_tolerance_with_fewer_evaluations():
    model = _cnn(nn.Softplus)
    with torch.no_grad():  # sharper non-linearity: samples need different numbers of steps
        model[0].weight.mul_(8)
        model[4].weight.mul_(8)
    torch.manual_seed(3)
    x = torch.rand(6, 3, 12, 12)
    ig = IntegratedGradients(model, adaptive=True, tol=1e-4, atol=0.0, start_steps=2, max_steps=256)
    attr, delta = ig.attribute(x, top_k=2, return_convergence_delta=True)
    with torch.no_grad():
        out = model(x)
        top = out.argsort(1, descending=True)[:, :2]
        gap = out.gather(1, top) - model(torch.zeros_like(x)).gather(1, top)
    assert bool((delta.abs() <= 1e-4 * gap.abs()).all())
    evals = ig.n_evaluations_
    assert float(evals.float().mean()) < 50 and len(set(evals.tolist())) > 1
    # a sample's result is the fixed-n IG at the n it stopped at: evaluations 2 + 4 + ... + n = 2n - 2
    for i in range(6):
        n_last = (int(evals[i]) + 2) // 2
        fixed = IntegratedGradients(model, n_steps=n_last).attribute(x[i:i + 1], top[i:i + 1])
        torch.testing.assert_close(attr[i:i + 1], fixed, atol=1e-6, rtol=1e-5)
        if n_last > 2:  # it stopped because the previous n missed the tolerance
            _, d_prev = IntegratedGradients(model, n_steps=n_last // 2).attribute(
                x[i:i + 1], top[i:i + 1], return_convergence_delta=True)
            assert bool((d_prev.abs() > 1e-4 * gap[i:i + 1].abs()).any())


def test_refuses_bad_input():
    ig = IntegratedGradients(_cnn())
    with pytest.raises(InputError):
        ig.attribute(torch.full((1, 3, 8, 8), 1.5), 0)
    x = torch.rand(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        ig.attribute(x, 0)
    with pytest.raises(InputError):
        ig.attribute(torch.rand(1, 3, 8, 8), 0, baseline=torch.full((3, 8, 8), -0.1))
    with pytest.raises(InputError):
        ig.attribute(torch.rand(1, 3, 8, 8), 7)


def test_completeness_under_one_percent_on_zoo_resnet18():
    """The zoo's resnet18 (random init, seed 0, eval mode), 32 px, 50 Gauss-Legendre steps, blurred
    baseline (sigma 10 px scaled to 32 px): |f(x) - f(x')| is a sizeable fraction of a logit."""
    models = pytest.importorskip("medxai.models")
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ig = IntegratedGradients(model, n_steps=50, blur_scaled=True)
    attr, delta = ig.attribute(x, None, baseline="blur", return_convergence_delta=True)
    with torch.no_grad():
        out = model(x)
        t = out.argmax(1, keepdim=True)
        gap = (out.gather(1, t) - model(ig.baselines(x, None, "blur")[0]).gather(1, t))[:, 0]
    assert float(gap.abs().min()) > 0.3
    torch.testing.assert_close(delta, attr.flatten(1).sum(1) - gap, atol=1e-4, rtol=1e-4)
    assert float((delta.abs() / gap.abs()).max()) < 0.01
