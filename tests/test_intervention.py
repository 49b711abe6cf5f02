"""Shortcut reliance by intervention: region replacement, control regions, effects, and an end-to-end check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medxai.data.synthetic import generate, generate_one
from medxai.errors import ConfigError, InputError
from medxai.evaluate.intervention import (
    box_region,
    intervention_effect,
    random_regions,
    replace_region,
    transplant_effect,
)

# ------------------------------------------------------------------------------------ helpers


class BoxModel(nn.Module):
    """Logits (B, 2) = [threshold, mean intensity inside a fixed box]: positive when the box is bright."""

    def __init__(self, rows: slice, cols: slice, threshold: float = 0.4) -> None:
        super().__init__()
        self.rows, self.cols, self.threshold = rows, cols, threshold
        self.dummy = nn.Parameter(torch.zeros(()))  # so the model has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :, self.rows, self.cols].mean((1, 2, 3))
        return torch.stack([torch.full_like(m, self.threshold), m], 1) * 10


def corner_images(n: int = 40, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dim smooth-ish noise; a bright 4x4 marker at rows/cols 1:5 on the even-indexed images (y = 1)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    y = (torch.arange(n) % 2 == 0).long()
    x[y == 1, :, 1:5, 1:5] = 0.95
    region = box_region((size, size), (1 / size, 1 / size, 4 / size, 4 / size), n=n)
    return x, y, region


CORNER = BoxModel(slice(0, 6), slice(0, 6))
CENTRE = BoxModel(slice(6, 10), slice(6, 10), threshold=0.5)


def bbox(r: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(r.any(1)).flatten(), torch.nonzero(r.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# ---------------------------------------------------------------------------------- replace_region


@pytest.mark.parametrize("method", ["inpaint", "mean", "blur"])
def test_outside_region_is_bitwise_unchanged(method):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 20, 20, generator=g)
    r = torch.zeros(3, 1, 20, 20, dtype=torch.bool)
    r[0, :, 2:6, 3:9] = True
    r[1, :, 10:18, 10:12] = True
    r[2, :, 0:3, 17:20] = True
    out = replace_region(x, r, method)
    rr = r.expand_as(x)
    assert torch.equal(out[~rr], x[~rr])
    assert not torch.equal(out[rr], x[rr])
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert out.shape == x.shape and out.dtype == x.dtype


def test_mean_fill_equals_hand_computation():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(1, 2, 4, 4) / 31
    r = torch.zeros(1, 4, 4, dtype=torch.bool)  # (1, H, W) form
    r[0, 1:3, 1:3] = True
    out = replace_region(x, r, "mean")
    for c in range(2):
        v = x[0, c].numpy()
        expected = (v.sum() - v[1:3, 1:3].sum()) / 12
        np.testing.assert_allclose(out[0, c, 1:3, 1:3].numpy(), expected, rtol=1e-6)


def test_inpaint_reproduces_a_linear_ramp():
    h = w = 24
    i, j = torch.meshgrid(torch.arange(h) / (h - 1), torch.arange(w) / (w - 1), indexing="ij")
    ramp = (0.1 + 0.8 * (0.6 * i + 0.4 * j)).float()
    x = torch.stack([ramp, 1 - ramp])[None]  # two channels
    r = torch.zeros(1, 1, h, w, dtype=torch.bool)
    r[..., 8:14, 9:15] = True
    x_marked = torch.where(r, torch.ones_like(x), x)  # a bright marker to remove
    out = replace_region(x_marked, r, "inpaint")
    assert float((out - x).abs().max()) < 0.02


def test_blur_keeps_a_constant_image_and_dims_a_marker():
    x = torch.full((1, 1, 16, 16), 0.3)
    r = box_region((16, 16), (0.25, 0.25, 0.25, 0.25))
    assert torch.allclose(replace_region(x, r, "blur"), x, atol=1e-6)
    marked = torch.where(r, torch.ones_like(x), x)
    out = replace_region(marked, r, "blur")
    inside = out[r.expand_as(out)]
    assert 0.3 < float(inside.min()) and float(inside.max()) < 0.95 and float(inside.mean()) < 0.85


def test_replace_region_refuses_bad_input():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="bool"):
        replace_region(x, torch.ones(2, 1, 8, 8), "mean")
    with pytest.raises(InputError, match="method"):
        replace_region(x, torch.ones(2, 1, 8, 8, dtype=torch.bool), "zero")
    with pytest.raises(InputError, match="whole image"):
        replace_region(x, torch.ones(2, 1, 8, 8, dtype=torch.bool), "mean")
    with pytest.raises(InputError, match="batch"):
        replace_region(x, torch.ones(3, 1, 8, 8, dtype=torch.bool), "mean")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        replace_region(x * 2, torch.zeros(2, 1, 8, 8, dtype=torch.bool), "mean")


# --------------------------------------------------------------------------- random_regions, box_region


def glyphs() -> torch.Tensor:
    r = torch.zeros(4, 1, 24, 24, dtype=torch.bool)
    r[0, 0, 1:4, 1:6] = True
    r[1, 0, 10:15, 20:23] = True
    r[1, 0, 12, 19] = True  # an L-ish shape
    r[2, 0, 5:8, 5:8] = True
    r[2, 0, 6, 6] = False  # a ring
    return r  # r[3] empty


def test_random_regions_translate_the_shape_inside_and_away():
    r = glyphs()
    out = random_regions(r, seed=3)
    assert out.shape == r.shape and out.dtype == torch.bool
    for i in range(3):
        assert int(out[i].sum()) == int(r[i].sum())
        a, b = bbox(r[i, 0]), bbox(out[i, 0])
        assert torch.equal(r[i, 0, a[0]:a[1], a[2]:a[3]], out[i, 0, b[0]:b[1], b[2]:b[3]])  # same shape
        assert not bool(out[i, 0, a[0]:a[1], a[2]:a[3]].any())  # nothing inside the original's box
    assert not bool(out[3].any())
    assert torch.equal(random_regions(r, seed=3), out)
    assert not torch.equal(random_regions(r, seed=4), out)


def test_random_regions_fall_back_to_the_farthest_offset():
    r = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    r[0, 0, 2:17, 3:18] = True  # 15 x 15: every placement overlaps
    out = random_regions(r, seed=0)
    assert int(out.sum()) == 225
    top, _, left, _ = bbox(out[0, 0])
    assert (top, left) in {(0, 5), (5, 5), (0, 0), (5, 0)}
    assert (top, left) == (5, 0)  # the farthest offset from (2, 3)


def test_box_region_pixel_counts():
    r = box_region((10, 20), (0.2, 0.25, 0.5, 0.5), n=3)
    assert r.shape == (3, 1, 10, 20) and r.dtype == torch.bool
    assert int(r[0].sum()) == 50
    assert bool(r[:, :, 2:7, 5:15].all()) and int(r.sum()) == 150
    assert int(box_region((7, 7), (0.0, 0.0, 1.0, 1.0)).sum()) == 49
    with pytest.raises(InputError, match="outside"):
        box_region((10, 10), (0.5, 0.0, 0.6, 0.1))
    with pytest.raises(InputError, match="no pixel"):
        box_region((10, 10), (0.0, 0.0, 0.01, 0.5))


# ------------------------------------------------------------------------------ intervention_effect


def test_corner_model_relies_on_the_corner():
    x, y, region = corner_images()
    res = intervention_effect(CORNER, x, region, y, n_boot=400, seed=0)
    assert res["n"] == 40 and res["n_excluded"] == 0 and res["method"] == "inpaint" and res["positive"] == 1
    reg, ctl, diff = res["region"], res["control"], res["difference"]
    assert reg["flip_rate"] == 0.5  # every positive (marker) image flips, no negative one does
    assert reg["positive_flip_rate"] == 1.0 and reg["n_predicted_positive"] == 20
    assert ctl["flip_rate"] <= 0.05 and res["control_overlapping"] == 0
    assert diff["flip_rate_ci"][0] > 0.3 and diff["mean_prob_change_ci"][1] < 0
    assert diff["p_value"] < 0.01
    assert reg["auc_before"] == 1.0 and reg["auc_after"] < 0.8
    lo, hi = reg["auc_change_ci"]
    assert lo <= reg["auc_change"] <= hi < 0
    assert res["counterfactual"] is None


def test_centre_model_ignores_the_corner():
    x, y, region = corner_images()
    x[: 10, :, 6:10, 6:10] = 0.9  # some images are positive for the centre model
    res = intervention_effect(CENTRE, x, region, y, n_boot=200)
    assert res["region"]["flip_rate"] == 0.0
    assert res["region"]["mean_prob_change"] == 0.0
    assert res["region"]["positive_flip_rate"] == 0.0
    assert res["difference"]["flip_rate_ci"][0] <= 0.0 and res["difference"]["p_value"] > 0.5


def test_effects_equal_hand_computation():
    x = torch.full((6, 1, 8, 8), 0.2)
    levels = [0.9, 0.6, 0.45, 0.3, 0.9, 0.1]
    for i, v in enumerate(levels):
        x[i, :, 0:2, 0:2] = v
    x[5, :, 6:8, 6:8] = 0.8  # outside everything the model looks at
    region = torch.zeros(6, 1, 8, 8, dtype=torch.bool)
    region[:5, :, 0:2, 0:2] = True  # image 5 has an empty region: excluded
    model = BoxModel(slice(0, 3), slice(0, 3), threshold=0.3)
    y = torch.tensor([1, 1, 0, 0, 1, 0])
    res = intervention_effect(model, x, region, y, method="mean", control=False, n_boot=0)
    assert res["n"] == 5 and res["n_excluded"] == 1
    with torch.no_grad():
        p0 = torch.softmax(model(x[:5]), 1)[:, 1].double()
        p1 = torch.softmax(model(replace_region(x[:5], region[:5], "mean")), 1)[:, 1].double()
    before, after = p0 > 0.5, p1 > 0.5
    assert before.tolist() == [True, True, True, False, True] and not after.any()
    reg = res["region"]
    assert reg["flip_rate"] == pytest.approx(float((before != after).double().mean()))  # 4 / 5
    assert reg["flip_rate"] == pytest.approx(0.8)
    assert reg["positive_flip_rate"] == 1.0
    assert reg["mean_prob_change"] == pytest.approx(float((p1 - p0).mean()), abs=1e-9)
    assert reg["flip_rate_ci"] is None and reg["mean_prob_change_ci"] is None and reg["auc_change_ci"] is None
    assert res["control"] is None and res["difference"] is None
    from sklearn.metrics import roc_auc_score

    assert reg["auc_before"] == pytest.approx(roc_auc_score([1, 1, 0, 0, 1], p0.numpy()))


def test_degenerate_cases_are_stated():
    x, _, region = corner_images(8)
    res = intervention_effect(CORNER, x, region, torch.ones(8, dtype=torch.long), n_boot=50)
    assert res["region"]["auc_before"] is None and "one class" in res["region"]["auc_reason"]
    res = intervention_effect(CORNER, x[1::2], region[1::2], n_boot=50)  # no image predicted positive
    assert res["region"]["positive_flip_rate"] is None and "positive_flip_reason" in res["region"]
    assert "auc_reason" in res["region"]
    with pytest.raises(InputError, match="empty"):
        intervention_effect(CORNER, x, torch.zeros_like(region), n_boot=0)
    with pytest.raises(InputError, match="shape"):
        intervention_effect(CORNER, x, region, counterfactual=x[:2], n_boot=0)


# --------------------------------------------------------------------------------- generator options


def test_generate_one_counterfactual_and_defaults():
    kw = dict(size=48, seed=5, split="test", shortcut=0.8)
    for i in range(6):
        plain = generate_one("cxr-pneumonia", i, **kw)
        off = generate_one("cxr-pneumonia", i, counterfactual=False, **kw)
        on = generate_one("cxr-pneumonia", i, counterfactual=True, **kw)
        assert "counterfactual" not in plain and set(off) == set(plain)
        for k in ("image", "mask", "shortcut_mask"):
            assert np.array_equal(plain[k], off[k]) and np.array_equal(plain[k], on[k])
        cf, m = on["counterfactual"], on["shortcut_mask"]
        assert cf.shape == on["image"].shape and cf.dtype == np.uint8
        assert np.array_equal(cf[~m], on["image"][~m])
        if on["shortcut_present"]:
            assert (cf[m] != on["image"][m]).any()
        else:
            assert np.array_equal(cf, on["image"])


def test_shortcut_in_test_follows_the_label():
    st = generate("cxr-pneumonia", 40, size=32, split="test", shortcut=1.0, shortcut_in_test=True)
    assert np.array_equal(st.shortcut_present, st.labels == 1)
    plain = generate("cxr-pneumonia", 40, size=32, split="test", shortcut=1.0)
    assert not np.array_equal(plain.shortcut_present, plain.labels == 1)
    assert "shortcut_in_test" not in plain.options
    with pytest.raises(ConfigError, match="shortcut_in_test"):
        generate_one("cxr-pneumonia", 0, size=32, shortcut=1.0, shortcut_in_test="yes")
    with pytest.raises(ConfigError, match="unknown"):
        generate_one("cxr-pneumonia", 0, size=32, shortcut_in_tset=True)


# ------------------------------------------------------------------------------------- end to end

SIZE = 32


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def _train(shortcut: float | None, seed: int = 0) -> nn.Module:
    """small-cnn, Adam 1e-3, 8 epochs of batches of 32 on 200 seeded cxr-pneumonia train images."""
    from medxai.models import create

    st = generate("cxr-pneumonia", 200, size=SIZE, seed=seed, split="train", shortcut=shortcut,
                  shortcut_in_test=True, balanced=True)
    x, y = _tensor(st.images), torch.from_numpy(st.labels).long()
    torch.manual_seed(seed)
    model = create("small-cnn", 2, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(8):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 32):
            i = perm[s:s + 32]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def e2e():
    """Three models (marker = label, no marker, marker uncorrelated) and test images with / without the marker."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores more threads only spin (about 2x slower measured)
    try:
        models = {"shortcut": _train(1.0), "clean": _train(None), "uncorrelated": _train(0.5)}
    finally:
        torch.set_num_threads(n_threads)
    te = [generate_one("cxr-pneumonia", i, size=SIZE, seed=0, split="test", shortcut=1.0, shortcut_in_test=True,
                       balanced=True, counterfactual=True) for i in range(200)]
    marked = [t for t in te if t["shortcut_present"]][:80]
    normal = [t for t in te if not t["shortcut_present"]][:80]
    assert len(marked) == 80 and len(normal) == 80 and all(t["label"] == 1 for t in marked)
    data = {"x": _tensor(np.stack([t["image"] for t in marked])),
            "cf": _tensor(np.stack([t["counterfactual"] for t in marked])),
            "region": torch.from_numpy(np.stack([t["shortcut_mask"] for t in marked]))[:, None],
            "y": torch.tensor([int(t["label"]) for t in marked]),
            "normal": _tensor(np.stack([t["image"] for t in normal]))}
    return models, data


def test_end_to_end_removal_shows_reliance(e2e, one_thread):
    models, d = e2e
    kw = dict(counterfactual=d["cf"], n_boot=500, seed=0)
    sc = intervention_effect(models["shortcut"], d["x"], d["region"], d["y"], **kw)
    # measured: region flip 0.963 [0.925, 1.0], control 0.0, counterfactual 0.963,
    # difference 0.963 CI [0.925, 1.0], p = 0.002, mean prob change -0.59
    assert sc["n"] == 80 and sc["n_excluded"] == 0
    assert sc["region"]["flip_rate"] >= 0.7 and sc["control"]["flip_rate"] <= 0.1
    assert sc["counterfactual"]["flip_rate"] >= 0.7
    assert sc["difference"]["flip_rate_ci"][0] > 0.3 and sc["difference"]["p_value"] < 0.01
    assert sc["region"]["mean_prob_change"] < -0.3
    assert "one class" in sc["region"]["auc_reason"]  # every marked test image is PNEUMONIA
    cl = intervention_effect(models["clean"], d["x"], d["region"], d["y"], **kw)
    # measured: region flip 0.025 [0.0, 0.0625], control 0.0, counterfactual 0.025, difference CI [0.0, 0.0625],
    # p = 0.13 (mean prob change -0.14: the bright marker reads a little like opacity to it)
    assert cl["region"]["flip_rate"] <= 0.1 and cl["counterfactual"]["flip_rate"] <= 0.1
    assert cl["difference"]["flip_rate_ci"][0] <= 0.0 or cl["region"]["flip_rate"] <= 0.1
    assert sc["difference"]["flip_rate"] > cl["difference"]["flip_rate"] + 0.5
    un = intervention_effect(models["uncorrelated"], d["x"], d["region"], d["y"], **kw)
    # measured: region flip 0.0125, control 0.0, counterfactual 0.0375, difference CI [0.0, 0.0375], p = 0.41
    assert un["region"]["flip_rate"] <= 0.1 and un["difference"]["p_value"] > 0.05


def test_end_to_end_transplant(e2e, one_thread):
    models, d = e2e
    marker, mask = d["x"][:1], d["region"][:1]
    sc = transplant_effect(models["shortcut"], d["normal"], marker, mask, n_boot=300)
    # measured: flip 1.0 [1.0, 1.0], to_positive 1.0, mean prob change +0.60
    assert sc["n"] == 80 and sc["flip_rate"] >= 0.7 and sc["flip_rate_ci"][0] >= 0.6
    assert sc["mean_prob_change"] > 0.3
    un = transplant_effect(models["uncorrelated"], d["normal"], marker, mask, n_boot=300)
    # measured: flip 0.0125 [0.0, 0.05], mean prob change +0.011 (the marker was seen in training but carries no label)
    assert un["flip_rate"] <= 0.1 and un["flip_rate_ci"][1] < sc["flip_rate_ci"][0]
    cl = transplant_effect(models["clean"], d["normal"], marker, mask, n_boot=300)
    # measured: flip 0.5 [0.4, 0.62], mean prob change +0.22: a model that never saw a marker still
    # reads a bright blob as opacity (out of distribution), so transplant alone over-calls reliance;
    # removal (above) does not. Only its being well below the shortcut model is asserted.
    assert cl["flip_rate"] <= sc["flip_rate"] - 0.25 and cl["mean_prob_change"] < 0.6 * sc["mean_prob_change"]
