"""Attack steps: the L-inf and L2 step / projection / random start equal their formulas."""

import math

import numpy as np
import torch

from medxai.attacks import STEPS, L2Step, LinfStep


def test_registry_names():
    assert STEPS.names() == ["l2", "linf"]
    assert STEPS.get("l2") is L2Step and STEPS.get("linf") is LinfStep


def test_linf_step_and_projection_formulas():
    s = LinfStep()
    g = torch.tensor([[[[0.3, -2.0], [0.0, 5.0]]]])
    alpha = torch.tensor(0.1).view(1, 1, 1, 1)
    assert torch.equal(s.step(g, alpha), torch.tensor([[[[0.1, -0.1], [0.0, 0.1]]]]))
    d = torch.tensor([[[[0.05, -0.3], [0.2, -0.01]]]])
    eps = torch.tensor(0.1).view(1, 1, 1, 1)
    assert torch.equal(s.project(d, eps), torch.tensor([[[[0.05, -0.1], [0.1, -0.01]]]]))


def test_l2_step_is_normalised_gradient_times_alpha():
    s = L2Step()
    g = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]])  # norms 5 and 0
    alpha = torch.tensor([0.5, 0.5]).view(2, 1, 1, 1)
    out = s.step(g, alpha)
    assert torch.allclose(out[0], torch.tensor([[[0.3, 0.4]]]), atol=1e-7)
    assert torch.equal(out[1], torch.zeros(1, 1, 2))  # zero gradient -> no step (1e-10 guard)


def test_l2_projection_formula_per_sample():
    s = L2Step()
    d = torch.tensor([[[[3.0, 4.0]]], [[[0.3, 0.4]]]])  # norms 5 and 0.5
    eps = torch.tensor([1.0, 1.0]).view(2, 1, 1, 1)
    out = s.project(d, eps)
    assert torch.allclose(out[0], torch.tensor([[[0.6, 0.8]]]), atol=1e-7)  # scaled onto the sphere
    assert torch.equal(out[1], d[1])  # inside: unchanged


def test_random_starts_lie_in_their_balls():
    gen = torch.Generator().manual_seed(0)
    eps = torch.tensor([0.0, 0.1, 0.5]).view(3, 1, 1, 1)
    d = LinfStep().random_perturb(torch.Size((3, 3, 8, 8)), eps, generator=gen, device="cpu", dtype=torch.float32)
    assert float(d[0].abs().max()) == 0.0
    assert float(d[1].abs().max()) <= 0.1 and float(d[1].abs().max()) > 0.09  # fills the box
    d2 = L2Step().random_perturb(torch.Size((3, 3, 8, 8)), eps, generator=gen, device="cpu", dtype=torch.float32)
    norms = d2.flatten(1).norm(dim=1)
    assert float(norms[0]) == 0.0
    assert bool((norms[1:] <= eps.view(-1)[1:] * (1 + 1e-6)).all())


def test_l2_random_start_radius_distribution_is_uniform_in_ball():
    # uniform in a d-ball: P(||delta|| <= r * eps) = r^d; with d = 2 the median radius is eps / sqrt(2)
    gen = torch.Generator().manual_seed(1)
    n = 20000
    eps = torch.ones(n, 1, 1, 1)
    d = L2Step().random_perturb(torch.Size((n, 1, 1, 2)), eps, generator=gen, device="cpu", dtype=torch.float32)
    med = float(d.flatten(1).norm(dim=1).median())
    assert abs(med - 1 / math.sqrt(2)) < 0.01, med
    ang = np.arctan2(d[:, 0, 0, 1].numpy(), d[:, 0, 0, 0].numpy())
    hist, _ = np.histogram(ang, bins=8, range=(-np.pi, np.pi))
    assert hist.min() > 0.9 * n / 8  # isotropic
