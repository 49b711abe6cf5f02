"""LIME: the ridge fit equals sklearn's, a one-superpixel model ranks that superpixel first, the
weights agree with the lime library on the same segmentation, multilabel top_k, no side effects."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from medxai.errors import InputError
from medxai.explain import REGISTRY, Lime, kernel_weights, superpixels, weighted_ridge


def _grid_segments(h: int, w: int, cell: int) -> torch.Tensor:
    r = torch.arange(h)[:, None] // cell
    c = torch.arange(w)[None, :] // cell
    return (r * ((w + cell - 1) // cell) + c).long()


def _cnn(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                      nn.Linear(96, k))
    with torch.no_grad():
        m[4].weight.mul_(8.0)  # spatially varied, not flat probabilities
    return m.eval()


def _image(h: int = 24, w: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


def test_fit_equals_sklearn_weighted_ridge():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import pairwise_distances

    model = _cnn()
    x = _image()
    seg = _grid_segments(24, 24, 6)  # 16 superpixels
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, (300, 16))
    z[0] = 1
    z[5] = 0  # an all-off sample (cosine distance 1)
    res = Lime(model).explain_superpixels(x, 2, segments=seg, perturbations=torch.from_numpy(z))
    # independent reference: images built one at a time, lime's distances and kernel, sklearn Ridge
    img = x[0]
    means = torch.stack([img[:, seg == s].mean(1) for s in range(16)])  # (16, 3)
    fill = means[seg].permute(2, 0, 1)
    with torch.no_grad():
        ys = []
        for row in z:
            on = torch.from_numpy(row.astype(bool))[seg]
            ys.append(torch.softmax(model(torch.where(on, img, fill)[None]), -1)[0, 2].item())
    y = np.array(ys)
    d = pairwise_distances(z, z[:1], metric="cosine").ravel()
    sw = np.sqrt(np.exp(-(d**2) / 0.25**2))
    ridge = Ridge(alpha=1.0).fit(z, y, sample_weight=sw)
    np.testing.assert_allclose(res.outputs[0, :, 0].numpy(), y, atol=1e-6)
    np.testing.assert_allclose(res.sample_weights[0].numpy(), sw, atol=1e-12)
    np.testing.assert_allclose(res.weights[0, 0].numpy(), ridge.coef_, atol=1e-5)
    np.testing.assert_allclose(res.intercept[0, 0].item(), ridge.intercept_, atol=1e-5)
    np.testing.assert_allclose(res.score[0, 0].item(), ridge.score(z, y, sample_weight=sw), atol=1e-5)
    np.testing.assert_allclose(res.local_pred[0, 0].item(), ridge.predict(z[:1])[0], atol=1e-5)
    # the pixel map is the weight of each pixel's superpixel
    pm = Lime(model).attribute(x, 2, segments=seg, perturbations=torch.from_numpy(z))
    torch.testing.assert_close(pm[0, 0], res.weights[0, 0][seg])


def test_weighted_ridge_batched_matches_sklearn_per_target():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(3)
    z = torch.randint(0, 2, (2, 50, 7), generator=g).double()
    y = torch.randn(2, 50, 3, generator=g, dtype=torch.float64)
    w = torch.rand(2, 50, generator=g, dtype=torch.float64)
    coef, icpt, score = weighted_ridge(z, y, w, alpha=0.7)
    for b in range(2):
        for t in range(3):
            r = Ridge(alpha=0.7).fit(z[b].numpy(), y[b, :, t].numpy(), sample_weight=w[b].numpy())
            np.testing.assert_allclose(coef[b, t].numpy(), r.coef_, atol=1e-10)
            np.testing.assert_allclose(icpt[b, t].item(), r.intercept_, atol=1e-10)
            np.testing.assert_allclose(score[b, t].item(),
                                       r.score(z[b].numpy(), y[b, :, t].numpy(), sample_weight=w[b].numpy()),
                                       atol=1e-10)


def test_kernel_weights_cosine():
    from sklearn.metrics import pairwise_distances

    z = torch.tensor([[[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]])
    w = kernel_weights(z, torch.tensor([3]))
    d = pairwise_distances(z[0, :, :3].numpy(), np.ones((1, 3)), metric="cosine").ravel()
    np.testing.assert_allclose(w[0].numpy(), np.sqrt(np.exp(-(d**2) / 0.0625)), atol=1e-12)


class _OneSuperpixel(nn.Module):
    """Class 1's logit = 20 x mean of x^2 inside one region (changed by mean-colour and by black
    fill, by Jensen); class 0's logit = 0."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        e = (x**2 * self.region).sum((1, 2, 3)) / self.region.sum()
        return torch.stack([torch.zeros_like(e), 20 * e], 1)


@pytest.mark.parametrize("hide_color", [None, 0.0])
def test_model_depending_on_one_superpixel_ranks_it_first(hide_color):
    seg = _grid_segments(24, 24, 6)
    model = _OneSuperpixel(seg == 9)
    x = _image(seed=4)
    res = Lime(model, num_samples=400, hide_color=hide_color).explain_superpixels(x, 1, segments=seg)
    assert res.ranking()[0, 0, 0].item() == 9
    others = res.weights[0, 0].clone()
    others[9] = 0
    assert res.weights[0, 0, 9] > 10 * others.abs().max()
    assert res.score[0, 0] > 0.9


def test_agrees_with_lime_library(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    lime_image = pytest.importorskip("lime.lime_image")
    model = _cnn()
    x = _image(32, 32, seed=5)
    seg = superpixels(x, "slic", n_segments=30)[0]
    n_seg = int(seg.max()) + 1
    assert 10 <= n_seg <= 40

    def classifier_fn(imgs):
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(imgs).permute(0, 3, 1, 2).float()), -1).numpy()

    label = int(model(x).argmax())
    exp = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        x[0].permute(1, 2, 0).double().numpy(), classifier_fn, labels=(label,), top_labels=None,
        hide_color=None, num_samples=2000, batch_size=64, segmentation_fn=lambda im: seg.numpy(),
        random_seed=0)
    theirs = np.zeros(n_seg)
    for f, wgt in exp.local_exp[label]:
        theirs[f] = wgt
    ours = Lime(model, num_samples=2000).explain_superpixels(x, label, segments=seg)
    rho = spearmanr(ours.weights[0, 0, :n_seg].numpy(), theirs).statistic
    assert rho >= 0.8, rho  # measured 1.0 (17 superpixels)
    assert set(ours.ranking()[0, 0, :3].tolist()) == set(np.argsort(-theirs, kind="stable")[:3].tolist())
    assert abs(ours.intercept[0, 0].item() - exp.intercept[label]) < 0.05


def test_quickshift_equals_lime_default_segmentation():
    """``superpixels(x, "quickshift")`` is lime's default segmentation (quickshift kernel 4, max_dist 200,
    ratio 0.2), up to label order."""
    import warnings

    wrappers = pytest.importorskip("lime.wrappers.scikit_image")
    g = torch.Generator().manual_seed(8)
    x = F.interpolate(torch.rand(1, 3, 24, 24, generator=g), size=96, mode="bilinear", align_corners=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg_fn = wrappers.SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=0)
        theirs = seg_fn(x[0].permute(1, 2, 0).double().numpy())
    ours = superpixels(x, "quickshift")[0].numpy()
    assert int(ours.max()) + 1 >= 5  # not a trivial segmentation
    np.testing.assert_array_equal(ours, np.unique(theirs, return_inverse=True)[1].reshape(theirs.shape))


def test_topk_multilabel_equals_single_calls_and_seeding():
    model = _cnn(k=5)
    x = torch.cat([_image(seed=6), _image(seed=7)])
    lime = Lime(model, output="sigmoid", num_samples=64, segmentation_params={"n_segments": 12})
    multi = lime.attribute(x, top_k=3)
    order = torch.sort(model(x).detach(), dim=-1, descending=True, stable=True).indices[:, :3]
    for j in range(3):
        torch.testing.assert_close(multi[:, j], lime.attribute(x, order[:, j]))
    assert multi.shape == (2, 3, 1, 24, 24)
    other = lime.attribute(x, order[:, 0], seed=1)
    assert not torch.equal(other, multi[:, 0])
    assert REGISTRY.get("lime") is Lime


def test_segmentations():
    x = _image(48, 48, seed=8)
    for method in ("slic", "quickshift"):
        seg = superpixels(torch.cat([x, x.flip(-1)]), method)
        assert seg.shape == (2, 48, 48)
        for s in seg:  # labels are 0..F-1, all used
            assert torch.equal(torch.unique(s), torch.arange(int(s.max()) + 1))
    gray = x[:, :1]
    torch.testing.assert_close(superpixels(gray), superpixels(gray.expand(-1, 3, -1, -1)))
    # a user segmentation with arbitrary ids is relabelled in order
    model = _cnn()
    seg = torch.where(_grid_segments(24, 24, 12) == 0, 7, 100 + _grid_segments(24, 24, 12))
    res = Lime(model, num_samples=20).explain_superpixels(_image(), 0, segments=seg)
    assert res.n_features.tolist() == [4] and res.segments[0, 0, 0] == 0
    with pytest.raises(InputError):
        Lime(model, segmentation="watershed").attribute(_image(), 0)
    with pytest.raises(InputError):
        Lime(model).attribute(_image(), 0, segments=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(InputError):
        Lime(model, hide_color=3.0).attribute(_image(), 0)


def test_no_side_effects_when_model_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = _cnn(), 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("midway")
            return self.inner(x)

    model = Boom().train()
    g = model.inner[0].weight.grad = torch.ones_like(model.inner[0].weight)
    with pytest.raises(RuntimeError, match="midway"):
        Lime(model, num_samples=50, batch_size=8).attribute(_image(), 0)
    assert all(m.training for m in model.modules()) and model.inner[0].weight.grad is g
    assert all(p.requires_grad for p in model.parameters())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
