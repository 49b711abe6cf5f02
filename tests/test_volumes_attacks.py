"""The attacks on volumes (B, C, D, H, W) (issue 19): DeepFool / CW radii against the analytic minimum of a 3-D
linear model, Square's cubes (the 3-D L2 block by hand, a one-voxel threshold model), and the AutoAttack
ensemble in the eps-ball, in [0, 1] and not above APGD-CE alone."""

import math

import pytest
import torch
from torch import nn

from medxai.attacks.apgd import APGD, APGDT
from medxai.attacks.autoattack import FAB, AutoAttack, Square, _l2_eta, _l2_window, _side
from medxai.attacks.minnorm import DeepFool, perturbation_norm, robustness_radius
from medxai.errors import InputError

SHAPE = (1, 3, 4, 4)  # (C, D, H, W)


def _linear3d(k: int = 2, seed: int = 0):
    """Flatten + Linear on (1, 3, 4, 4) volumes; boundaries pass near the centre of the box."""
    d = math.prod(SHAPE)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g)
    b = -0.5 * w.sum(1) + 0.1 * torch.randn(k, generator=g)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval(), w, b


def _analytic(x, w, b, q):
    """Minimal l_p distance to the boundary of logits W x + b (DeepFool eq. 3 / 8, q the dual exponent):
    min_j (f_y - f_j) / ||w_y - w_j||_q; for K = 2 this is |f| / ||w||_q with f = z_1 - z_0, w = w_1 - w_0."""
    z = x.flatten(1) @ w.T + b
    y = z.argmax(1)
    wd = w[y][:, None, :] - w[None]
    dist = (z.gather(1, y[:, None]) - z) / wd.norm(p=q, dim=2)
    dist[torch.arange(len(y)), y] = float("inf")
    return y, dist.min(1).values


def _points(w, b, q, lo, hi, n=6):
    g = torch.Generator().manual_seed(1)
    x = 0.4 + 0.2 * torch.rand(256, *SHAPE, generator=g)
    _, dist = _analytic(x, w, b, q)
    return x[(dist > lo) & (dist < hi)][:n]


@pytest.mark.parametrize(("k", "norm"), [(2, "l2"), (2, "linf"), (4, "l2")])
def test_deepfool_radius_on_volumes_is_the_analytic_distance(k, norm):
    model, w, b = _linear3d(k)
    q = 2 if norm == "l2" else 1
    x = _points(w, b, q, *((0.04, 0.15) if norm == "l2" else (0.01, 0.05)))
    assert x.shape[1:] == SHAPE and len(x) >= 4
    y, dist = _analytic(x, w, b, q)
    if k == 2:  # |f| / ||w||_q written out
        f = x.flatten(1) @ (w[1] - w[0]) + (b[1] - b[0])
        assert torch.allclose(dist, f.abs() / (w[1] - w[0]).norm(p=q), atol=1e-6)
    adv = DeepFool(model, norm=norm, overshoot=0.0)(x, y)
    assert adv.shape == x.shape
    assert torch.allclose(perturbation_norm(adv - x, norm), dist, atol=1e-4, rtol=0)
    res = robustness_radius(model, x, y, norm, "deepfool")  # overshoot 0.02 scales the step
    assert torch.allclose(res.radius, 1.02 * dist, atol=1e-4, rtol=0) and res.reason == ["found"] * len(x)
    assert res.x_adv.shape == x.shape and 0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1


def test_cw_radius_on_volumes_is_close_to_the_analytic_distance_and_misclassified_is_zero():
    model, w, b = _linear3d(2)
    x = _points(w, b, 2, 0.04, 0.15, n=4)
    y, dist = _analytic(x, w, b, 2)
    y[0] = 1 - y[0]  # already misclassified: radius 0, x_adv = x
    res = robustness_radius(model, x, y, "l2", "cw", steps=300, lr=4e-3)
    assert float(res.radius[0]) == 0 and torch.equal(res.x_adv[0], x[0])
    # CW cannot go below the minimum; its Adam search ends within 1 % of it here (measured: 0.01-0.3 %)
    assert bool((res.radius[1:] >= dist[1:] * (1 - 1e-3)).all()) and bool((res.radius[1:] <= dist[1:] * 1.01).all())


def test_square_l2_block_in_3d_by_hand():
    # Chebyshev shells of a 3x3x3 block: centre sum_{k >= 0} 1/(k+1)^2 over k <= 1 = 1 + 1/4, the 26 others 1/4
    blk = _l2_window((3, 3, 3), torch.device("cpu"))
    ref = torch.full((3, 3, 3), 0.25)
    ref[1, 1, 1] = 1.25
    assert torch.allclose(blk, ref / ref.norm(), atol=1e-7)
    eta = _l2_eta(5, torch.Generator().manual_seed(0), torch.device("cpu"), 3)
    assert eta.shape == (5, 5, 5) and float(eta.norm()) == pytest.approx(1.0, abs=1e-6)
    # +block on the first half (2 of 5 layers) of the split axis, -block on the other 3
    pos, neg = eta.clamp_min(0), eta.clamp_max(0)
    assert int((pos > 0).sum()) == 2 * 25 and int((neg < 0).sum()) == 3 * 25
    # the window holds a fraction p of the voxels: side (p D H W)^(1/3)
    assert _side(1 / 8, (16, 16, 16)) == 8 and _side(0.8, (16, 16)) == round(math.sqrt(0.8 * 256))


class _OneVoxel(nn.Module):
    """Class 1 iff voxel (1, 2, 3) exceeds 0.5: logits (0, 20 (v - 0.5))."""

    def forward(self, x):
        v = x[:, 0, 1, 2, 3]
        return torch.stack([torch.zeros_like(v), 20 * (v - 0.5)], 1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.1)])
def test_square_cubes_break_a_one_voxel_threshold_and_nothing_beyond_reach(norm, eps):
    model = _OneVoxel()
    x = 0.5 + 0.2 * torch.rand(6, 1, 4, 6, 6, generator=torch.Generator().manual_seed(0)) - 0.1
    x[:3, 0, 1, 2, 3] = 0.5 - 0.5 * eps  # breakable
    x[3:, 0, 1, 2, 3] = 0.5 - 1.5 * eps  # out of reach
    y = torch.zeros(6, dtype=torch.long)
    adv = Square(model, eps, norm=norm, n_queries=1000 if norm == "linf" else 3000, seed=0)(x, y)
    assert (model(adv).argmax(1) == 1).tolist() == [True] * 3 + [False] * 3
    assert float(perturbation_norm(adv - x, norm).max()) <= eps * (1 + 1e-5)
    assert 0 <= float(adv.min()) and float(adv.max()) <= 1


def _cnn3d(k):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 48, k)).eval()


@pytest.mark.parametrize(("k", "norm", "eps"), [(2, "linf", 0.03), (5, "l2", 0.25)])
def test_autoattack_on_volumes_in_ball_in_box_not_above_apgd_ce(k, norm, eps):
    model = _cnn3d(k)
    x = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % k
    res = AutoAttack(model, eps, norm, steps=10, n_queries=60, n_targets=3).run(x, y)
    assert res.x_adv.shape == x.shape and res.broken_by[0] == "clean"
    xa = APGD(model, eps, steps=10, norm=norm, seed=0)(x, y)
    with torch.no_grad():
        alone = float((model(xa).argmax(1) == y).float().mean())
        assert torch.equal(res.robust, model(res.x_adv).argmax(1) == y)
    assert res.robust_accuracy <= alone + 1e-9 and res.robust_accuracy_after["apgd-ce"] == pytest.approx(alone)
    assert res.robust_accuracy < res.clean_accuracy  # the budget breaks some volumes
    assert float(perturbation_norm(res.x_adv - x, norm).max()) <= eps * (1 + 1e-5)
    assert 0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1
    for atk in (APGDT(model, eps, steps=5, norm=norm, n_targets=2), FAB(model, eps, norm=norm, steps=10),
                Square(model, eps, norm=norm, n_queries=30)):
        out = atk(x, y)
        assert out.shape == x.shape and float(perturbation_norm(out - x, norm).max()) <= eps * (1 + 1e-5)
        assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_volumes_with_a_wrong_rank_are_refused():
    model, _, _ = _linear3d(2)
    with pytest.raises(InputError, match="dimensions"):
        AutoAttack(model, 0.1).run(torch.rand(2, 1, 1, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="dimensions"):
        robustness_radius(model, torch.rand(2, 48), torch.zeros(2, dtype=torch.long))
