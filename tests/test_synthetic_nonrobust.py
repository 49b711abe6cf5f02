"""The opt-in non-robust texture of skin-lesion / fundus-dr (Ilyas et al. 2019): bytes, rates, learnability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medxai._util.seed import derive_seed
from medxai.data.synthetic import generate, generate_one
from medxai.data.synthetic._api import LABEL, STUDY_REGISTRY, texture_class
from medxai.data.synthetic._draw import GRATINGS, grating
from medxai.errors import ConfigError

STUDIES = ("skin-lesion", "fundus-dr")


@pytest.mark.parametrize("study", STUDIES)
def test_off_is_todays_bytes(study):
    a = generate(study, 4, size=32, seed=1, shortcut=0.8, sites=True)
    b = generate(study, 4, size=32, seed=1, shortcut=0.8, sites=True, nonrobust=None)
    assert a.images.tobytes() == b.images.tobytes() and a.masks.tobytes() == b.masks.tobytes()
    assert "nonrobust" not in b.options
    one = generate_one(study, 2, size=32, seed=1, counterfactual=True)
    assert "texture_class" not in one and "without_texture" not in one


@pytest.mark.parametrize("study", STUDIES)
def test_texture_is_the_only_difference(study):
    for i in range(3):
        kw = dict(size=48, seed=2, split="train", shortcut=0.9, balanced=True)
        plain = generate_one(study, i, **kw)
        on = generate_one(study, i, counterfactual=True, nonrobust=4, **kw)
        # the anatomy, lesion and marker come from the same streams: only the texture was added
        assert np.array_equal(on["without_texture"], plain["image"])
        assert np.array_equal(on["mask"], plain["mask"]) and on["label"] == plain["label"]
        assert on["shortcut_present"] == plain["shortcut_present"]
        diff = on["image"].astype(int) - on["without_texture"].astype(int)
        assert np.abs(diff).max() <= 4 + 1  # 4/255 plus rounding
        assert (diff != 0).any(axis=2).mean() > 0.6  # over most of the image (fundus: its black border too)
        assert 0 <= on["texture_class"] < len(STUDY_REGISTRY.get(study).class_names)
    same = generate(study, 3, size=32, nonrobust=4)
    assert same.images.tobytes() == generate(study, 3, size=32, nonrobust=4).images.tobytes()


def test_gratings_are_distinct_and_bounded():
    g = [grating(32, c, 0.3) for c in range(len(GRATINGS))]
    assert all(np.abs(x).max() <= 1 and np.abs(x).max() > 0.7 for x in g)
    assert all(not np.allclose(g[i], g[j]) for i in range(len(g)) for j in range(i))


def _texture_classes(study: str, n: int, split: str, **options) -> tuple[np.ndarray, np.ndarray]:
    """Labels and texture classes of images 0..n-1 from their seeds alone (no rendering)."""
    spec = STUDY_REGISTRY.get(study)
    opts = spec.resolve(dict(options))
    labels, tex = [], []
    for i in range(n):
        base = derive_seed(spec.name, 0, split, i)
        label = spec.draw_label(np.random.default_rng((base, LABEL)), opts)
        labels.append(label)
        tex.append(texture_class(base, label, len(spec.class_names), split, opts)[0])
    return np.array(labels), np.array(tex)


@pytest.mark.parametrize("study", STUDIES)
def test_rate_and_conflict(study):
    n, sd = 400, (0.25 / 400) ** 0.5  # sampling sd of a share is at most 0.025
    y, t = _texture_classes(study, n, "train", balanced=True, nonrobust=4, nonrobust_rate=0.7)
    assert abs((y == t).mean() - 0.7) < 4 * sd
    y, t = _texture_classes(study, n, "train", balanced=True, nonrobust=4, nonrobust_conflict=0.3)
    assert (y == t).all()  # conflict is for the test split only
    y, t = _texture_classes(study, n, "test", balanced=True, nonrobust=4, nonrobust_conflict=0.3)
    assert abs((y != t).mean() - 0.3) < 4 * sd
    assert len(set(t[y != t].tolist())) > 1  # the other classes' gratings, not just one
    for i in range(4):  # the rendered item says the same
        one = generate_one(study, i, size=16, split="test", balanced=True, nonrobust=4, nonrobust_conflict=0.3)
        assert one["label"] == y[i] and one["texture_class"] == t[i]


@pytest.mark.parametrize("options", [
    {"nonrobust": -1}, {"nonrobust": 40}, {"nonrobust": True}, {"nonrobust": "4"},
    {"nonrobust_rate": 0.5}, {"nonrobust": 4, "nonrobust_rate": 1.5}, {"nonrobust": 4, "nonrobust_conflict": -0.1},
])
def test_bad_options(options):
    with pytest.raises(ConfigError):
        generate("skin-lesion", 1, size=16, **options)


def test_other_studies_refuse_it():
    with pytest.raises(ConfigError, match="nonrobust"):
        generate("cxr-pneumonia", 1, size=16, nonrobust=4)


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _fit(x: torch.Tensor, y: torch.Tensor, k: int, eps: float | None, epochs: int = 6) -> torch.nn.Module:
    """small-cnn, Adam on cross-entropy; with ``eps`` (/1) each batch is first perturbed by 3-step L-inf PGD."""
    from medxai.attacks import PGD
    from medxai.models import create

    torch.manual_seed(0)
    model = create("small-cnn", k, in_chans=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for ep in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            xb, yb = x[perm[i:i + 32]], y[perm[i:i + 32]]
            if eps is not None:
                model.eval()
                xb = PGD(model, eps=eps, steps=3, seed=ep * 1000 + i)(xb, yb)
                model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
def test_standard_model_uses_the_texture_robust_model_does_not(one_thread):
    """Ilyas et al. 2019 in miniature: skin-lesion, 32 px, texture 8/255, 300 train / 200 test images.

    Measured (data seeds 0 (this test), 1, 2, 3; one CPU thread, ~8 s in all): standard model (4 epochs)
    accuracy with / without texture 0.98 / 0.45, 0.95 / 0.43, 0.98 / 0.34, 0.94 / 0.46 (drop 0.48-0.65);
    adversarially trained (6 epochs, PGD eps 8/255, 3 steps) 0.87 / 0.85, 0.92 / 0.87, 0.87 / 0.88,
    0.89 / 0.87 (drop -0.01-0.05).
    """
    kw = dict(size=32, balanced=True, nonrobust=8)
    train = generate("skin-lesion", 300, split="train", **kw)
    x, y = _tensor(list(train.images)), torch.from_numpy(train.labels)
    test = [generate_one("skin-lesion", i, split="test", counterfactual=True, **kw) for i in range(200)]
    xt, xn = _tensor([o["image"] for o in test]), _tensor([o["without_texture"] for o in test])
    yt = torch.tensor([o["label"] for o in test])

    def acc(model: torch.nn.Module, images: torch.Tensor) -> float:
        with torch.no_grad():
            return (model(images).argmax(1) == yt).float().mean().item()

    std, rob = _fit(x, y, 3, None, epochs=4), _fit(x, y, 3, 8 / 255)
    std_drop, rob_drop = acc(std, xt) - acc(std, xn), acc(rob, xt) - acc(rob, xn)
    assert acc(std, xt) > 0.85 and std_drop > 0.25, (acc(std, xt), std_drop)
    assert rob_drop < 0.1 and rob_drop < std_drop - 0.15, (rob_drop, std_drop)
    assert acc(rob, xn) > acc(std, xn) + 0.1 and acc(rob, xn) > 0.6  # robust: reads the lesion (chance 1/3)
