"""Random-logit test, smooth MPRT, efficient MPRT and Focus vs Quantus 0.6.0 on shared inputs (the
other class injected; a one-layer model whose randomisation seeds coincide), analytic cases,
per-sample independence, the registry adapters, and exact restoration of the model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from _metrics_helpers import images, tiny_cnn
from _metrics_helpers import quantus as load_quantus
from medxai._util.seed import derive_seed
from medxai.errors import InputError
from medxai.metrics import METRICS, ScoreContext, model_randomisation
from medxai.metrics.randomisation_extra import (
    build_mosaics,
    discrete_entropy,
    efficient_mprt,
    focus,
    mosaic_focus,
    random_logit,
    smooth_mprt,
)


def grad(model, x, t):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)[0]


def q_grad(model, inputs, targets, **kw):
    return grad(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()).numpy()


def sobel(model, x, target):
    """Ignores the model and the class: the Sobel edge magnitude of the image."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
    g = x.mean(1, keepdim=True)
    return (F.conv2d(g, kx[None, None], padding=1).square() + F.conv2d(g, kx.T[None, None], padding=1).square()).sqrt()


def one_layer_model():
    """One module with parameters ("0"), so Quantus' seed (seed + 1 for every layer) and medxai's
    (derive_seed(seed, "randomise", name)) can be made to coincide."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5, padding=2), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten()).eval()
    with torch.no_grad():
        m[0].weight.mul_(4.0)
    return m


QSEED = derive_seed(0, "randomise", "0") % 2**63 - 1


def _quiet(metric, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(device="cpu", **kw)


@pytest.fixture(scope="module")
def data():
    return images(4, 1, 12, 12, seed=2), torch.tensor([0, 1, 2, 1])


# ---------------------------------------------------------------- random logit

def test_random_logit_equals_quantus_with_injected_class(data):
    quantus = load_quantus()
    from skimage.metrics import structural_similarity

    x, y = data
    model = tiny_cnn(1, 4, seed=1)
    k = 4
    np.random.seed(42)  # noqa: NPY002 - Quantus' draw of the other class, replayed
    classes = np.stack([np.arange(k)] * 4)
    keep = np.ones_like(classes)
    keep[np.arange(4)[None, :], y.numpy()] = 0
    off = classes[keep.astype(bool)].reshape(4, -1)[np.arange(4)[None, :], np.random.randint(0, k - 1, 4)].flatten()  # noqa: NPY002 - replays Quantus' global RNG

    def ssim2d(a, b, batched=True, **kw):  # the paper's SSIM on the 2-D maps (Quantus flattens them)
        out = []
        for aa, bb in zip(a, b, strict=True):
            aa, bb = np.abs(aa.reshape(12, 12)), np.abs(bb.reshape(12, 12))
            aa, bb = (aa - aa.min()) / np.ptp(aa), (bb - bb.min()) / np.ptp(bb)
            out.append(structural_similarity(aa, bb, data_range=1.0))
        return np.array(out)

    q = _quiet(quantus.RandomLogit(num_classes=k, seed=42, similarity_func=ssim2d, normalise=False, abs=False,
                                   disable_warnings=True), model=model, x_batch=x.numpy(), y_batch=y.numpy(),
               a_batch=grad(model, x, y).numpy(), explain_func=q_grad)
    ours = random_logit(model, grad, x, y, other=torch.from_numpy(off))
    np.testing.assert_allclose(ours.numpy(), np.asarray(q), atol=1e-5)
    assert float(ours.max()) < 0.9
    given = random_logit(model, grad, x, y, other=torch.from_numpy(off), maps=grad(model, x, y))
    torch.testing.assert_close(given, ours)


def test_random_logit_of_a_class_independent_explainer_is_one_and_draws_are_per_sample(data):
    x, y = data
    model = tiny_cnn(1, 5, seed=2)
    np.testing.assert_allclose(random_logit(model, sobel, x, y).numpy(), 1.0, atol=1e-12)
    full = random_logit(model, grad, x, y, seed=3)
    one = random_logit(model, grad, x[2:3], y[2:3], seed=3)
    torch.testing.assert_close(one[0], full[2], rtol=0, atol=1e-6)  # float32 batched vs single convolutions
    drawn = set()
    for s in range(40):  # the other class is never the target, and every other class is drawn
        g = torch.Generator().manual_seed(s)
        r = int(torch.randint(0, 4, (), generator=g))
        drawn.add(r + int(r >= 1))
    assert drawn == {0, 2, 3, 4}
    with pytest.raises(InputError):
        random_logit(model, grad, x, y, other=y)


# ---------------------------------------------------------------- efficient MPRT

def test_discrete_entropy_equals_numpy_histogram_and_scipy():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 1, 12, 12, generator=g, dtype=torch.float64)
    v[2] = 1.0  # constant: entropy 0
    v[3, 0, :6] = 0.5  # ties
    v[4] = torch.linspace(0, 1, 144, dtype=torch.float64).reshape(1, 12, 12)  # values on the bin edges
    for bins in (10, 100):
        want = [entropy(np.histogram(v[i].numpy(), bins=bins)[0]) for i in range(5)]
        np.testing.assert_allclose(discrete_entropy(v, bins).numpy(), want, atol=1e-12)


def test_efficient_mprt_equals_quantus_and_restores_the_model(data):
    quantus = load_quantus()
    x, y = data
    model = one_layer_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = _quiet(quantus.EfficientMPRT(seed=QSEED, disable_warnings=True), model=model, x_batch=x.numpy(),
               y_batch=y.numpy(), a_batch=None, explain_func=q_grad)
    res = efficient_mprt(model, grad, x, y)
    np.testing.assert_allclose(res.score.numpy(), np.asarray(q, dtype=np.float64), atol=1e-5)
    want = (res.randomised_entropy - res.explanation_entropy) / res.explanation_entropy
    torch.testing.assert_close(res.score, want)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.isfinite(res.model_rise).all() and torch.isfinite(res.relative_to_model).all()


def test_efficient_mprt_known_answers_and_restore_on_error(data):
    x, y = data
    model = tiny_cnn(1, 3, seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = efficient_mprt(model, sobel, x, y)  # ignores the model: no rise
    np.testing.assert_allclose(res.score.numpy(), 0.0, atol=1e-12)
    const = efficient_mprt(model, lambda m, xx, t: torch.ones_like(xx), x, y)
    assert torch.isnan(const.score).all()  # H(a) = 0: relative rise undefined
    calls = []

    def boom(m, xx, t):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("explainer failed on the randomised model")
        return grad(m, xx, t)

    with pytest.raises(RuntimeError, match="randomised"):
        efficient_mprt(model, boom, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    full = efficient_mprt(model.double(), grad, x.double(), y, seed=2)
    one = efficient_mprt(model, grad, x[1:2].double(), y[1:2], seed=2)
    torch.testing.assert_close(one.score[0], full.score[1], rtol=0, atol=1e-9)
    model.float()


# ---------------------------------------------------------------- smooth MPRT

def test_smooth_mprt_without_noise_equals_quantus(data):
    quantus = load_quantus()
    x, y = data
    model = one_layer_model()
    q = _quiet(quantus.SmoothMPRT(seed=QSEED, nr_samples=3, noise_magnitude=0.0, return_last_correlation=True,
                                  disable_warnings=True), model=model, x_batch=x.numpy(), y_batch=y.numpy(),
               a_batch=None, explain_func=q_grad, explain_func_kwargs={"method": "Gradient"})
    res = smooth_mprt(model, grad, x, y, nr_samples=3, noise_magnitude=0.0)
    assert res.layers == ["0"]
    np.testing.assert_allclose(res.spearman_abs[-1].numpy(), np.asarray(q), atol=1e-5)


def test_smooth_mprt_orders_noise_and_restoration(data):
    x, y = data
    model = tiny_cnn(1, 3, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bottom = smooth_mprt(model, grad, x, y, nr_samples=3, seed=1)
    assert bottom.layers[0] == "0" and bottom.layers[-1] == "7"  # from the input up
    top = smooth_mprt(model, grad, x, y, nr_samples=1, order="top_down", seed=1)
    plain = model_randomisation(model, grad, x, y, seed=1)
    torch.testing.assert_close(top.spearman_abs, plain.spearman_abs)  # one noiseless copy: plain MPRT
    # the last cascading step randomises every layer, in either order, with the same per-layer seeds
    up1 = smooth_mprt(model, grad, x, y, nr_samples=1, seed=1)
    torch.testing.assert_close(up1.spearman_abs[-1], plain.spearman_abs[-1], rtol=0, atol=1e-12)
    edges = smooth_mprt(model, sobel, x, y, nr_samples=4, noise_magnitude=0.2)
    np.testing.assert_allclose(edges.spearman_abs.numpy(), 1.0, atol=1e-12)  # model-independent
    one = smooth_mprt(model.double(), grad, x[3:].double(), y[3:], nr_samples=3, seed=1)
    full = smooth_mprt(model, grad, x.double(), y, nr_samples=3, seed=1)
    torch.testing.assert_close(one.spearman_abs[:, 0], full.spearman_abs[:, 3], rtol=0, atol=1e-9)
    model.float()
    assert all(torch.equal(before[k], v.float() if v.is_floating_point() else v)
               for k, v in model.state_dict().items())
    with pytest.raises(InputError):
        smooth_mprt(model, grad, x, y, order="sideways")


# ---------------------------------------------------------------- Focus

def test_build_mosaics_places_images_and_refuses_impossible_ones():
    x = torch.stack([torch.full((1, 4, 4), v) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)])
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    mos, quads, ok = build_mosaics(x, labels, seed=1)
    assert mos.shape == (6, 1, 8, 8) and ok[:4].all()
    for i in range(6):
        if not ok[i]:
            continue
        tiles = [mos[i, 0, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] for r in (0, 1) for c in (0, 1)]
        vals = [float(t[0, 0]) for t in tiles]
        assert all(torch.all(t == t[0, 0]) for t in tiles)
        src = [int(torch.nonzero((x[:, 0, 0, 0] - v).abs() < 1e-6)[0]) for v in vals]
        assert i in src and len(set(src)) == 4
        assert [bool(labels[s] == labels[i]) for s in src] == quads[i].tolist()
        assert int(quads[i].sum()) == 2
    _, _, ok5 = build_mosaics(x[:5], torch.tensor([0, 1, 1, 2, 2]), seed=0)
    assert ok5.tolist() == [False, True, True, True, True]  # class 0 has no second image
    _, q3, ok3 = build_mosaics(x[:4], torch.tensor([0, 0, 0, 1]), n_target=3, seed=0)
    assert ok3.tolist() == [True, True, True, False] and q3[:3].sum(1).tolist() == [3, 3, 3]
    again = build_mosaics(x, labels, seed=1)[0]
    assert torch.equal(again, mos)


def test_focus_equals_quantus_and_known_answers():
    quantus = load_quantus()
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 8, 8, generator=g)
    quads = torch.tensor([[True, False, False, True], [False, True, True, False], [True, True, False, False]])
    model = tiny_cnn(1, 3, seed=6)
    x = torch.rand(3, 1, 8, 8, generator=g)
    q = _quiet(quantus.Focus(normalise=False, abs=False, disable_warnings=True), model=model, x_batch=x.numpy(),
               y_batch=np.zeros(3, dtype=int), a_batch=maps[:, None].numpy(), custom_batch=quads.int().numpy())
    np.testing.assert_allclose(focus(maps, quads).numpy(), np.asarray(q), atol=1e-5)
    ind = torch.zeros(3, 8, 8)
    ind[0, :4, :4] = 1.0
    np.testing.assert_allclose(focus(ind, quads).numpy()[0], 1.0)
    assert torch.isnan(focus(-ind.abs() - 1, quads)).all()  # no positive relevance (Quantus: 0)


def test_mosaic_focus_is_one_for_an_explainer_that_finds_the_class():
    """Class-0 images are bright, class-1 images dark; the explainer's map is the brightness for
    class 0 and the darkness for class 1, so all positive relevance lies on the target's images."""
    x = torch.cat([torch.full((3, 1, 6, 6), 0.9), torch.full((3, 1, 6, 6), 0.0)])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def finder(m, xx, t):
        bright = (xx > 0.5).to(xx.dtype)
        return torch.where((t == 0)[:, None, None, None], bright, 1 - bright)

    f = mosaic_focus(model, finder, x, labels, seed=4)
    np.testing.assert_allclose(f.numpy(), 1.0)
    half = mosaic_focus(model, lambda m, xx, t: torch.ones_like(xx), x, labels)
    np.testing.assert_allclose(half.numpy(), 0.5)  # two of four quadrants hold the class
    alone = mosaic_focus(model, finder, x[:4], labels[:4], n_target=3)
    assert torch.isnan(alone[3]) and not torch.isnan(alone[:3]).any()  # class 1 has one image only
    cols = METRICS.get("focus").compute(ScoreContext(maps=torch.zeros(6, 6, 6), images=x, targets=labels,
                                                     model=model, explainer=finder))
    torch.testing.assert_close(cols["focus"], f)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registry_adapters(data):
    x, y = data
    model = tiny_cnn(1, 3, seed=7)
    ctx = ScoreContext(maps=torch.zeros(4, 12, 12), images=x, targets=y, model=model, explainer=grad,
                       options={"smooth_mprt": {"nr_samples": 2, "layers": ["0", "7"]}})
    for name in ("random_logit", "smooth_mprt", "efficient_mprt"):
        info = METRICS.get(name)
        assert info.category == "randomisation" and {"model", "images", "explainer"} <= info.needs
        assert info.compute(ctx)[name].shape == (4,)
    got = METRICS.get("random_logit").compute(ctx)["random_logit"]
    torch.testing.assert_close(got, random_logit(model, grad, x, y))
