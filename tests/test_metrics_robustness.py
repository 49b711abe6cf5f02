"""Explanation robustness metrics: agreement with captum 0.9.0 / Quantus 0.6.0 on injected
perturbations (and on Quantus' own reproduced draws), the papers' definitions where the anchors
differ, analytic zeros, batch independence, the perturbation draws, and registry adapters."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from _metrics_helpers import quantus as load_quantus
from medxai.errors import InputError
from medxai.metrics import METRICS, ScoreContext, score_samples
from medxai.metrics.robustness import (
    avg_sensitivity,
    draw_displacements,
    infidelity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
)

B, C, S, N = 3, 1, 8, 4



def grad(model, x, target):
    """Input gradient of the target logit (B, C, H, W)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        out = model(x).gather(1, target[:, None]).sum()
        return torch.autograd.grad(out, x)[0]


def constant(model, x, target):
    return torch.ones(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype)


def smooth_cnn(seed=0):
    """A tiny CNN with tanh activations: its input gradient moves with the input (a ReLU net's
    gradient is piecewise constant, so small perturbations often leave it exactly unchanged)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 3)).eval()


@pytest.fixture(scope="module")
def setup():
    model = smooth_cnn()
    g = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(B, C, S, S, generator=g)  # away from 0 and 1: no draw is cut
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _np_draws(seed, shape, kind, scale):
    """Quantus' draws: per step one (B, D) array from the global numpy RNG."""
    np.random.seed(seed)  # noqa: NPY002 - Quantus draws from the legacy global RNG
    draw = np.random.uniform if kind == "uniform" else np.random.normal
    steps = [draw(-scale, scale, shape) if kind == "uniform" else draw(0.0, scale, shape) for _ in range(N)]
    return torch.from_numpy(np.stack(steps, 1)).reshape(B, N, C, S, S)  # (B, N, C, H, W) float64


def _quantus(metric, model, x, y, a, **kw):
    def qexp(model, inputs, targets, **_):
        return grad(model, torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                                 explain_func=qexp, device="cpu", **kw), dtype=np.float64)


def _inject(deltas):
    """A Quantus perturb_func returning the given (B, N, ...) displacements step by step."""
    step = iter(range(N))

    def perturb(arr, indices, **_):
        return arr + deltas[:, next(step)].reshape(arr.shape[0], -1).numpy().astype(arr.dtype)

    return perturb


def test_sensitivities_equal_quantus_and_captum(setup):
    quantus = load_quantus()
    from captum.metrics import sensitivity_max

    model, x, y = setup
    a = grad(model, x, y)
    d = _np_draws(7, (B, C * S * S), "uniform", 0.02)
    ours_max = max_sensitivity(model, grad, x, y, perturbations=d)
    ours_avg = avg_sensitivity(model, grad, x, y, perturbations=d)
    for cls, ours in ((quantus.MaxSensitivity, ours_max), (quantus.AvgSensitivity, ours_avg)):
        np.random.seed(7)  # noqa: NPY002 - Quantus draws its own uniform noise: the same stream as d
        q = _quantus(cls(nr_samples=N, lower_bound=0.02, normalise=False, abs=False, disable_warnings=True),
                     model, x, y, a)
        np.testing.assert_allclose(ours.numpy(), q, rtol=1e-5, atol=1e-7)

    def perturb(inputs, radius):
        return inputs + d.flatten(0, 1).to(inputs.dtype)

    def explain_fn(inp, target):  # captum passes and expects tuples
        return (grad(model, inp[0], target),) if isinstance(inp, tuple) else grad(model, inp, target)

    cap = sensitivity_max(explain_fn, x, perturb_func=perturb,
                          n_perturb_samples=N, target=y)
    np.testing.assert_allclose(ours_max.numpy(), cap.double().numpy(), rtol=1e-5, atol=1e-7)
    # unnormalised: the plain max of ||e(x) - e(x')||_F, written from Yeh et al. eq. 2
    raw = max_sensitivity(model, grad, x, y, perturbations=d, normalise=False)
    ref = torch.stack([torch.stack([(a[i] - grad(model, (x[i] + d[i, p]).float()[None], y[i:i + 1])[0])
                                    .double().norm() for p in range(N)]).max() for i in range(B)])
    np.testing.assert_allclose(raw.numpy(), ref.numpy(), rtol=1e-5)


def test_local_lipschitz_equals_quantus(setup):
    quantus = load_quantus()
    model, x, y = setup
    a = grad(model, x, y)
    d = _np_draws(3, (B, C * S * S), "normal", 0.02)
    ours = local_lipschitz_estimate(model, grad, x, y, perturbations=d)
    np.random.seed(3)  # noqa: NPY002 - the stream Quantus draws from
    q = _quantus(quantus.LocalLipschitzEstimate(nr_samples=N, perturb_std=0.02, normalise=False, abs=False,
                                                disable_warnings=True), model, x, y, a)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-5)


@pytest.mark.parametrize("which", ["ris", "ros"])
def test_relative_stability_equals_quantus(setup, which):
    quantus = load_quantus()
    model, x, y = setup
    a = grad(model, x, y)
    d = _np_draws(5, (B, C * S * S), "uniform", 0.02)
    with torch.no_grad():
        kept = model((x[:, None] + d).float().flatten(0, 1)).argmax(1).reshape(B, N) == y[:, None]
    assert bool(kept.all())  # Quantus NaNs a whole sample otherwise (see the next test)
    fn, cls = ((relative_input_stability, quantus.RelativeInputStability) if which == "ris"
               else (relative_output_stability, quantus.RelativeOutputStability))
    ours = fn(model, grad, x, y, perturbations=d)
    q = _quantus(cls(nr_samples=N, perturb_func=_inject(d), disable_warnings=True), model, x, y, a)
    # float32 forwards of both sides: the small denominators amplify rounding (1.7e-5 relative seen on some CPUs)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-4)


def test_ris_on_quantus_own_draws_and_its_nan_finding(setup):
    """Quantus 0.6.0's RIS draws one-sided U(0.02, 0.2) noise (reproduced here from its numpy
    stream) and returns NaN for a sample as soon as one x' changes the prediction; Agarwal et al.
    discard that x'. Where no class changes the values agree; elsewhere ours is the max over the
    kept x' and Quantus' is NaN."""
    quantus = load_quantus()
    _, x, _ = setup
    model = smooth_cnn(seed=1)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = grad(model, x, y)
    np.random.seed(2)  # noqa: NPY002 - Quantus' stream
    d = torch.from_numpy(np.stack([np.random.uniform(0.02, 0.2, (B, C * S * S)) for _ in range(N)], 1))  # noqa: NPY002
    d = d.reshape(B, N, C, S, S)
    with torch.no_grad():
        kept = model((x[:, None] + d).float().flatten(0, 1)).argmax(1).reshape(B, N) == y[:, None]
    every = kept.all(1).numpy()
    assert every.any() and not every.all() and bool(kept.any(1).all())  # both cases occur
    np.random.seed(2)  # noqa: NPY002
    q = _quantus(quantus.RelativeInputStability(nr_samples=N, disable_warnings=True), model, x, y, a)
    ours = relative_input_stability(model, grad, x, y, perturbations=d)
    np.testing.assert_allclose(ours.numpy()[every], q[every], rtol=1e-5)
    assert np.isnan(q[~every]).all()
    for i in np.flatnonzero(~every):
        only_kept = relative_input_stability(model, grad, x[i:i + 1], y[i:i + 1], perturbations=d[i:i + 1, kept[i]])
        assert float(ours[i]) == pytest.approx(float(only_kept[0]), rel=1e-3)  # float32, other batch shape


def test_explainer_by_name(setup):
    model, x, y = setup
    by_name = max_sensitivity(model, "saliency", x, y, n_perturbations=2, seed=1)
    from medxai.explain import explain

    direct = max_sensitivity(model, lambda m, xx, t: explain(m, xx, "saliency", t), x, y, n_perturbations=2, seed=1)
    torch.testing.assert_close(by_name, direct)
    assert bool((by_name > 0).all())


def _linear(k=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, k)).double().eval()


def test_relative_stability_discards_class_changes_as_the_paper():
    """Agarwal et al. 2022: only x' with the clean prediction count (Quantus 0.6.0 makes the whole
    sample NaN instead); none kept gives NaN. Reference: eq. 2 / ROS written out here."""
    model = _linear()
    w = model[1].weight.detach()
    x = torch.full((1, C, S, S), 0.5, dtype=torch.float64)
    z = (w[1] - w[0]).reshape(1, C, S, S)
    toward = z.sign() * 0.02  # raises logit 1 - logit 0 by g = 0.02 ||z||_1
    gain = float((toward * z).sum())
    with torch.no_grad():  # put x at margin g / 2 on class 0's side: +toward flips, -toward does not
        margin = float(model(x)[0, 0] - model(x)[0, 1])
        model[1].bias[0] += 0.5 * gain - margin
    assert int(model(x).argmax(1)) == 0
    d = torch.stack([-toward, toward], 1)  # (1, 2, C, H, W): keeps, flips
    with torch.no_grad():
        assert model((x + d[0]).reshape(2, C, S, S)).argmax(1).tolist() == [0, 1]

    def e(model_, x_, t_):  # an explanation that moves with the input
        return x_ ** 2

    xp = x + d[0, :1]
    num = (((e(0, x, 0) - e(0, xp, 0)) / e(0, x, 0)).norm()).item()
    ris = num / max(((x - xp) / x).norm().item(), 1e-6)
    ros = num / max((model(x) - model(xp)).norm().item(), 1e-6)
    assert float(relative_input_stability(model, e, x, perturbations=d)) == pytest.approx(ris, rel=1e-10)
    assert float(relative_output_stability(model, e, x, perturbations=d)) == pytest.approx(ros, rel=1e-10)
    only_flip = d[:, 1:]
    assert torch.isnan(relative_input_stability(model, e, x, perturbations=only_flip)).all()
    assert torch.isnan(relative_output_stability(model, e, x, perturbations=only_flip)).all()


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("by_inputs", [False, True])
def test_infidelity_equals_captum(setup, normalise, by_inputs):
    from captum.metrics import infidelity as cap_infidelity

    model, x, y = setup
    a = grad(model, x, y) * (x if by_inputs else 1)
    i = _np_draws(11, (B, C * S * S), "normal", 0.05)

    def perturb(inputs):
        flat = i.flatten(0, 1).to(inputs.dtype)
        return flat, inputs - flat * (inputs if by_inputs else 1)

    cap = cap_infidelity(model, perturb, x, a, target=y, n_perturb_samples=N, normalize=normalise)
    ours = infidelity(model, x, a, y, perturbations=i, normalise=normalise, multiply_by_inputs=by_inputs)
    np.testing.assert_allclose(ours.numpy(), cap.double().numpy(), rtol=1e-5, atol=1e-9)
    # eq. 1 written out (beta = 1)
    if not normalise:
        with torch.no_grad():
            f = lambda z: model(z.float()).gather(1, y[:, None])[:, 0].double()
            ref = torch.stack([((i[:, p] * a).flatten(1).sum(1) - (f(x) - f(x - i[:, p] * (x if by_inputs else 1))))
                               .square() for p in range(N)], 1).mean(1)
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-9)


def test_infidelity_is_zero_on_a_linear_model():
    """Linear f: IΦ = f(x) - f(x - I) for the gradient with local perturbations, and for
    gradient x input with I' = I x (baseline 0): INFD = 0 analytically (float64 rounding only)."""
    model = _linear(k=3)
    x = torch.rand(B, C, S, S, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1])
    g = grad(model, x, y)
    for norm in (True, False):
        v = infidelity(model, x, g, y, n_perturbations=8, normalise=norm)
        assert float(v.max()) < 1e-24
        v = infidelity(model, x, g * x, y, n_perturbations=8, normalise=norm, multiply_by_inputs=True)
        assert float(v.max()) < 1e-24
    assert float(infidelity(model, x, g * x, y, n_perturbations=8).min()) > 1e-6  # wrong convention: not 0


@pytest.mark.parametrize("fn", [max_sensitivity, avg_sensitivity, local_lipschitz_estimate,
                                relative_input_stability, relative_output_stability])
def test_zero_for_an_explainer_that_ignores_the_input(setup, fn):
    model, x, _ = setup
    v = fn(model, constant, x, n_perturbations=3)
    assert torch.equal(v, torch.zeros(B, dtype=torch.float64))


def test_analytic_values_for_a_linear_explainer(setup):
    """e(x) = 3x: the Lipschitz ratio is 3 for every x' (eq. 4), RIS = 1 (the relative changes of e
    and x are equal, eq. 2), and the unnormalised sensitivity is 3 max ||x - x'|| (eq. 2, Yeh)."""
    model, x, _ = setup
    lin = lambda m, xx, t: 3 * xx
    d = (torch.rand(B, N, C, S, S, generator=torch.Generator().manual_seed(3), dtype=torch.float64) - 0.5) * 0.04
    np.testing.assert_allclose(local_lipschitz_estimate(model, lin, x, perturbations=d).numpy(), 3.0, rtol=1e-6)
    np.testing.assert_allclose(relative_input_stability(model, lin, x, perturbations=d).numpy(), 1.0, rtol=1e-5)
    xp = (x[:, None].double() + d).float().double()
    want = 3 * (x[:, None].double() - xp).flatten(2).norm(dim=2).amax(1)
    got = max_sensitivity(model, lin, x, perturbations=d, normalise=False)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("fn", [max_sensitivity, local_lipschitz_estimate, relative_output_stability])
def test_per_sample_independent_of_batch_and_chunks(setup, fn):
    model, x = smooth_cnn().double(), setup[1].double()  # float64: the ratios amplify float32 rounding
    full = fn(model, grad, x, n_perturbations=3, seed=4)
    alone = torch.cat([fn(model, grad, x[i:i + 1], n_perturbations=3, seed=4) for i in range(B)])
    chunked = fn(model, grad, x, n_perturbations=3, seed=4, batch_size=2)
    np.testing.assert_allclose(full.numpy(), alone.numpy(), rtol=1e-9)
    np.testing.assert_allclose(full.numpy(), chunked.numpy(), rtol=1e-9)
    other = fn(model, grad, x, n_perturbations=3, seed=[4, 9, 4])
    assert other[0] == pytest.approx(float(full[0]), rel=1e-6) and other[1] != pytest.approx(float(full[1]))


def test_infidelity_per_sample_and_registry(setup):
    model, x, y = setup
    a = grad(model, x, y)
    full = infidelity(model, x, a, y, seed=2)
    m64, x64, a64 = smooth_cnn().double(), x.double(), a.double()
    both = infidelity(m64, x64, a64, y, seed=2)
    alone = torch.cat([infidelity(m64, x64[i:i + 1], a64[i:i + 1], y[i:i + 1], seed=2) for i in range(B)])
    np.testing.assert_allclose(both.numpy(), alone.numpy(), rtol=1e-9)
    ctx = ScoreContext(maps=a[:, 0], images=x, targets=y, model=model, explainer=grad,
                       options={"infidelity": {"seed": 2}, "max_sensitivity": {"n_perturbations": 3}})
    np.testing.assert_allclose(METRICS.get("infidelity").compute(ctx)["infidelity"].numpy(), full.numpy(), rtol=1e-6)
    ms = METRICS.get("max_sensitivity").compute(ctx)["max_sensitivity"]
    torch.testing.assert_close(ms, max_sensitivity(model, grad, x, y, n_perturbations=3))
    assert METRICS.get("relative_input_stability").category == "robustness"
    res = score_samples(a[:, 0], ["max_sensitivity", "infidelity"], ids=["a", "b", "c"], images=x, targets=y,
                        model=model, explainer=grad, options={"max_sensitivity": {"n_perturbations": 3},
                                                              "infidelity": {"seed": 2}}, batch_size=2)
    np.testing.assert_allclose(res.columns["max_sensitivity"].numpy(), ms.numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.columns["infidelity"].numpy(), full.numpy(), rtol=1e-3)  # float32, batch 2
    assert res.meta["infidelity"]["category"] == "robustness" and not res.skipped


def test_noisier_explainer_is_more_sensitive(setup):
    model, x, _ = setup

    def noisy(k):
        def e(model_, x_, t_):  # the gradient plus an input-dependent high-frequency term
            return grad(model_, x_, t_) + k * torch.sin(400 * x_)
        return e

    v = [float(max_sensitivity(model, noisy(k), x, n_perturbations=4).mean()) for k in (0.0, 0.01, 0.1)]
    assert v[0] < v[1] < v[2]
    w = [float(local_lipschitz_estimate(model, noisy(k), x, n_perturbations=4).mean()) for k in (0.0, 0.1)]
    assert w[0] < w[1]


def test_draws_stay_in_the_unit_box_and_are_seeded():
    x = torch.tensor([0.0, 0.01, 0.5, 0.995, 1.0]).reshape(5, 1, 1, 1).expand(5, 1, 40, 50).contiguous()
    idx = torch.zeros(5, dtype=torch.long)
    t = draw_displacements(x, [1] * 5, idx, kind="ball", scale=0.02)
    xp = x.double() + t
    assert bool((xp >= 0).all() and (xp <= 1).all() and (t.abs() <= 0.02).all())
    assert float(t[0].min()) >= 0 and float(t[4].max()) <= 0  # the ball is cut, not clamped
    assert float(t[2].min()) < -0.019 and float(t[2].max()) > 0.019
    n = draw_displacements(x, [1] * 5, idx, kind="normal", scale=0.1)
    assert bool(((x.double() + n) >= 0).all() and ((x.double() + n) <= 1).all())
    assert float(n[2].std()) == pytest.approx(0.1, rel=0.05) and abs(float(n[2].mean())) < 0.005
    assert torch.equal(n, draw_displacements(x, [1] * 5, idx, kind="normal", scale=0.1))
    assert not torch.equal(n[0], draw_displacements(x, [1] * 5, idx + 1, kind="normal", scale=0.1)[0])
    # infidelity's direction: x - I x in [0, 1]
    i = draw_displacements(x, [2] * 5, idx, kind="normal", scale=0.5, direction=-x.double())
    y = x.double() - i * x.double()
    assert bool((y >= 0).all() and (y <= 1).all())


def test_refusals(setup):
    model, x, y = setup
    out = torch.full((B, 2, C, S, S), 0.9, dtype=torch.float64)
    with pytest.raises(InputError, match="leaves"):
        max_sensitivity(model, grad, x, y, perturbations=out)
    with pytest.raises(InputError, match="leaves"):
        infidelity(model, x, grad(model, x, y), y, perturbations=-out)
    with pytest.raises(InputError, match="perturbations must be"):
        max_sensitivity(model, grad, x, y, perturbations=out[:, :, :, :4])
    with pytest.raises(InputError):
        max_sensitivity(model, grad, x * 2, y)
    zero = lambda m, xx, t: torch.zeros(xx.shape[0], 1, S, S)
    assert torch.isnan(max_sensitivity(model, zero, x, n_perturbations=2)).all()  # 0 / 0: NaN


def test_sensitivity_with_given_targets_runs_no_clean_forward(setup):
    # the clean logits are read only for the predicted class (target=None) or the class check: with targets
    # given, max / avg sensitivity forward only the images they explain (x, then its B x N perturbations),
    # and give the same numbers as with the targets derived from the prediction
    model, x, y = setup
    seen = []
    h = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        given = max_sensitivity(model, grad, x, y, n_perturbations=N, seed=1, batch_size=64)
        n_given, seen[:] = sum(seen), []
        derived = max_sensitivity(model, grad, x, None, n_perturbations=N, seed=1, batch_size=64)
        n_derived = sum(seen)
    finally:
        h.remove()
    assert n_given == B + B * N and n_derived == n_given + B
    torch.testing.assert_close(given, derived, rtol=0, atol=0)
