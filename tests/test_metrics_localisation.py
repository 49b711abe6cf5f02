"""Localisation metrics vs independent numpy implementations, Quantus 0.6.0 where it is right,
and the definition where it is not (empty masks, weighted variants, ties)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from _metrics_helpers import images, smooth_maps, tiny_cnn
from medxai.errors import InputError
from medxai.metrics import (
    METRICS,
    energy_pointing_game,
    mask_auroc,
    mask_iou,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    resolve,
    topk_iou,
)

B, H, W = 6, 12, 12


@pytest.fixture(scope="module")
def data():
    a = smooth_maps(B, H, W)
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.random((B, H, W)) > 0.7)
    s[1] = False  # an empty mask
    s[2, 3:7, 2:9] = True
    return a, s


# ---------------------------------------------------------------- independent numpy references

def np_pointing(a, s, r=0.0):
    i = int(np.argmax(a.ravel()))  # first maximal index
    ty, tx = divmod(i, a.shape[1])
    yy, xx = np.nonzero(s)
    if not len(yy):
        return np.nan
    return float(np.any((yy - ty) ** 2 + (xx - tx) ** 2 <= r * r))


def np_energy(a, s):
    p = np.clip(a, 0, None)
    return np.nan if not s.any() or p.sum() == 0 else p[s].sum() / p.sum()


def np_mass(a, s):
    return np.nan if not s.any() else a[s].sum() / a.sum()


def np_rank(a, s):
    k = int(s.sum())
    if k == 0:
        return np.nan
    order = np.argsort(-a.ravel(), kind="stable")
    return s.ravel()[order[:k]].mean()


def np_auroc(a, s):
    if not s.any() or s.all():
        return np.nan
    return roc_auc_score(s.ravel(), a.ravel())


def np_box_of(m):
    """Enclose every connected component of m in one box (half-open x0, y0, x1, y1)."""
    lab, n = ndimage.label(m)
    boxes = ndimage.find_objects(lab)
    if not n:
        return None
    y0 = min(b[0].start for b in boxes)
    y1 = max(b[0].stop for b in boxes)
    x0 = min(b[1].start for b in boxes)
    x1 = max(b[1].stop for b in boxes)
    return (x0, y0, x1, y1)


def np_iou(p, q):
    iw = max(0, min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = iw * ih
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area(p) + area(q) - inter)


def np_topk_iou(a, box, k):
    v = np.sort(a.ravel())[::-1]
    thr = v[int(a.size * k / 100)]
    return np_iou(np_box_of(a >= thr), box)


def np_mask_iou_topk(a, s, k):
    v = np.sort(a.ravel())[::-1]
    keep = a >= v[int(a.size * k / 100)]
    return np.nan if not s.any() else (keep & s).sum() / (keep | s).sum()


REFS = {
    "pointing_game": (pointing_game, np_pointing),
    "energy_pointing_game": (energy_pointing_game, np_energy),
    "relevance_rank_accuracy": (relevance_rank_accuracy, np_rank),
    "mask_auroc": (mask_auroc, np_auroc),
}


@pytest.mark.parametrize("name", sorted(REFS))
def test_equals_numpy_reference(data, name):
    a, s = data
    fn, ref = REFS[name]
    got = fn(a, s).double().numpy()
    want = np.array([ref(a[i].double().numpy(), s[i].numpy()) for i in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert np.isnan(got[1])  # empty mask -> NaN


def test_mass_accuracy_numpy_and_tolerance(data):
    a, s = data
    pos = a.abs()
    want = np.array([np_mass(pos[i].double().numpy(), s[i].numpy()) for i in range(B)])
    np.testing.assert_allclose(relevance_mass_accuracy(pos, s).double().numpy(), want, rtol=1e-6, equal_nan=True)
    for r in (1, 2.5, 15):
        want = np.array([np_pointing(a[i].numpy(), s[i].numpy(), r) for i in range(B)])
        np.testing.assert_array_equal(pointing_game(a, s, tolerance=r).numpy(), want)


def test_mask_auroc_with_ties_equals_sklearn():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (5, 9, 9), generator=g).float()  # many ties
    s = torch.rand(5, 9, 9, generator=g) > 0.5
    want = [roc_auc_score(s[i].ravel().numpy(), a[i].ravel().numpy()) for i in range(5)]
    np.testing.assert_allclose(mask_auroc(a, s).double().numpy(), want, rtol=1e-7)
    s[0] = True  # no negatives: AUC undefined
    assert torch.isnan(mask_auroc(a, s)[0])


def test_topk_iou_equals_reference_with_boxes_and_masks():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(4, 16, 20, generator=g)
    a[:, 2:6, 3:8] += 1.0  # a blob and scattered pixels: several components
    boxes = torch.tensor([[3, 2, 8, 6], [0, 0, 20, 16], [10, 10, 14, 15], [5, 1, 6, 2]])
    got = topk_iou(a, boxes)
    assert got.shape == (4, 4)
    for i in range(4):
        for j, k in enumerate((5, 10, 20, 40)):
            want = np_topk_iou(a[i].numpy(), tuple(boxes[i].tolist()), k)
            assert abs(float(got[i, j]) - want) < 1e-6
    # a mask annotation is replaced by its enclosing box
    m = torch.zeros(4, 16, 20, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        m[i, y0:y1, x0:x1] = True
        m[i, y0, x0] = True
    torch.testing.assert_close(topk_iou(a, m), got)
    assert topk_iou(a, boxes, k=10).shape == (4,)


def test_mask_iou_topk_and_threshold(data):
    a, s = data
    want = np.array([np_mask_iou_topk(a[i].numpy(), s[i].numpy(), 20) for i in range(B)])
    np.testing.assert_allclose(mask_iou(a, s, k=20).double().numpy(), want, rtol=1e-6, equal_nan=True)
    an = a.numpy()
    norm = (an - an.min((1, 2), keepdims=True)) / (an.max((1, 2), keepdims=True) - an.min((1, 2), keepdims=True))
    keep = norm >= 0.5
    sn = s.numpy()
    want = np.array([(keep[i] & sn[i]).sum() / (keep[i] | sn[i]).sum() if sn[i].any() else np.nan for i in range(B)])
    np.testing.assert_allclose(mask_iou(a, s).double().numpy(), want, rtol=1e-6, equal_nan=True)


# ---------------------------------------------------------------- Quantus 0.6.0 where it is right

def _quantus(metric_cls, a, s, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = images(a.shape[0], 1, H, W).numpy()
        m = metric_cls(disable_warnings=True, display_progressbar=False, normalise=False, abs=False, **kw)
        out = m(model=tiny_cnn(), x_batch=x, y_batch=np.zeros(a.shape[0], int), a_batch=a[:, None].numpy(),
                s_batch=s[:, None].numpy(), device="cpu")
    return np.asarray(out, dtype=np.float64)


def test_equals_quantus_on_nonempty_masks(data):
    import quantus

    a, s = data
    ne = torch.tensor([i for i in range(B) if s[i].any()])
    a, s = a[ne], s[ne]
    np.testing.assert_array_equal(_quantus(quantus.PointingGame, a, s), pointing_game(a, s).numpy())
    np.testing.assert_allclose(_quantus(quantus.AttributionLocalisation, a, s, positive_attributions=True),
                               energy_pointing_game(a, s).numpy(), rtol=1e-6)
    np.testing.assert_allclose(_quantus(quantus.RelevanceRankAccuracy, a, s),
                               relevance_rank_accuracy(a, s).numpy(), rtol=1e-6)
    np.testing.assert_allclose(_quantus(quantus.RelevanceMassAccuracy, a.abs(), s),
                               relevance_mass_accuracy(a.abs(), s).numpy(), rtol=1e-5)
    np.testing.assert_allclose(_quantus(quantus.AUC, a, s), mask_auroc(a, s).numpy(), rtol=1e-6)


def test_quantus_bugs_are_not_reproduced(data):
    import quantus

    a, s = data
    # empty mask: Quantus' PointingGame writes NaN into a bool array -> True
    assert _quantus(quantus.PointingGame, a, s)[1] == 1.0
    assert torch.isnan(pointing_game(a, s)[1])
    # weighted pointing game: Quantus crashes; ours follows its documented intent
    with pytest.raises((TypeError, ValueError, IndexError)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _quantus(quantus.PointingGame, a, s, weighted=True)
    hit = pointing_game(a, s)
    size = s.flatten(1).sum(1).double() / (H * W)
    torch.testing.assert_close(pointing_game(a, s, weighted=True).double(), hit.double() * (1 - size), equal_nan=True)
    # weighted attribution localisation: Quantus divides by the size of x_batch[2:] (the batch axis),
    # so its score depends on the batch size; ours is mu * HW / |mask| (a uniform map scores 1)
    ql = _quantus(quantus.AttributionLocalisation, a, s, positive_attributions=True, weighted=True)
    q3 = _quantus(quantus.AttributionLocalisation, a[:3], s[:3], positive_attributions=True, weighted=True)
    assert not np.allclose(ql[[0, 2]], q3[[0, 2]])  # batch-size dependence
    mu = energy_pointing_game(a, s).double()
    torch.testing.assert_close(energy_pointing_game(a, s, weighted=True).double(), mu * H * W / size / (H * W),
                               equal_nan=True)
    uniform = torch.ones(B, H, W)
    ok = s.flatten(1).any(1)
    torch.testing.assert_close(energy_pointing_game(uniform, s, weighted=True)[ok], torch.ones(int(ok.sum())))


# ---------------------------------------------------------------- ties, NaN policy, inputs

def test_ties_lowest_flat_index_first():
    a = torch.zeros(1, 4, 4)
    a[0, 0, 3] = 1.0  # flat index 3
    a[0, 2, 1] = 1.0  # flat index 9, equal maximum
    s = torch.zeros(1, 4, 4, dtype=torch.bool)
    s[0, 2, 1] = True
    assert pointing_game(a, s).item() == 0.0  # the first maximum (index 3) is outside
    s2 = torch.zeros(1, 4, 4, dtype=torch.bool)
    s2[0, 0, 3] = True
    assert pointing_game(a, s2).item() == 1.0
    # rank accuracy, K = 1: of the tied top pixels, index 3 ranks first
    assert relevance_rank_accuracy(a, s).item() == 0.0
    assert relevance_rank_accuracy(a, s2).item() == 1.0
    # a constant map: every pixel ties; the first K pixels in row-major order are taken
    c = torch.full((1, 4, 4), 0.5)
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, :2] = True
    m[0, 3, 3] = True
    assert relevance_rank_accuracy(c, m).item() == pytest.approx(2 / 3)
    assert pointing_game(c, m).item() == 1.0


def test_nan_policy():
    a = torch.rand(2, 5, 5)
    s = torch.zeros(2, 5, 5, dtype=torch.bool)
    s[0, 1:3, 1:3] = True
    for name in ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "relevance_mass_accuracy",
                 "mask_auroc", "mask_iou"):
        out = METRICS.get(name).fn(a, s)
        assert torch.isnan(out[1]) and torch.isfinite(out[0]), name
    assert torch.isnan(topk_iou(a, s)[1]).all()
    # no positive mass: energy undefined
    assert torch.isnan(energy_pointing_game(-a, s)[0])
    assert torch.isnan(relevance_mass_accuracy(torch.zeros(2, 5, 5), s)[0])
    bad = a.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        pointing_game(bad, s)
    with pytest.raises(InputError, match="0 and 1"):
        pointing_game(a, s.float() * 2)
    with pytest.raises(InputError, match="resize"):
        pointing_game(a, torch.zeros(2, 4, 4, dtype=torch.bool))


def test_boxes_half_open_and_batch_independence(data):
    a, s = data
    boxes = torch.tensor([[2, 1, 5, 4]] * B, dtype=torch.float32)  # columns 2..4, rows 1..3
    m = torch.zeros(B, H, W, dtype=torch.bool)
    m[:, 1:4, 2:5] = True
    for name in ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "mask_auroc", "mask_iou"):
        fn = METRICS.get(name).fn
        torch.testing.assert_close(fn(a, boxes), fn(a, m), equal_nan=True)
        full = fn(a, s)
        one = torch.cat([fn(a[i : i + 1], s[i : i + 1]) for i in range(B)])
        torch.testing.assert_close(full, one, equal_nan=True, rtol=0, atol=0)
        # another batch around sample 0 does not change its score, nor do scaled neighbours
        other = torch.cat([a[:1], 1e6 * a[1:]])
        torch.testing.assert_close(fn(other, s)[0], full[0], equal_nan=True)


def test_per_class_masks_and_multi_target_maps():
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(3, 2, 8, 8, generator=g)  # two targets per image
    cls_masks = torch.rand(3, 4, 8, 8, generator=g) > 0.6  # four classes
    targets = torch.tensor([[0, 3], [2, 1], [3, 3]])
    for fn in (pointing_game, energy_pointing_game, relevance_rank_accuracy, mask_auroc):
        got = fn(maps, cls_masks, targets=targets)
        assert got.shape == (3, 2)
        for b in range(3):
            for t in range(2):
                want = fn(maps[b, t][None], cls_masks[b, targets[b, t]][None])
                torch.testing.assert_close(got[b, t : t + 1], want)
    # one map per image, class masks picked by a (B,) target
    got = energy_pointing_game(maps[:, 0], cls_masks, targets=targets[:, 1])
    want = energy_pointing_game(maps[:, 0], cls_masks[torch.arange(3), targets[:, 1]])
    torch.testing.assert_close(got, want)
    with pytest.raises(InputError, match="targets"):
        pointing_game(maps[:, 0], cls_masks)


def test_inputs_untouched_and_registry_metadata(data):
    a, s = data
    a0, s0 = a.clone(), s.clone()
    for name in METRICS.names():
        info = METRICS.get(name)
        if info.category == "localisation":
            info.fn(a, s)
            assert info.higher_is_better and "mask" in info.needs and info.reference
    assert torch.equal(a, a0) and torch.equal(s, s0)
    assert resolve("energy") is METRICS.get("energy_pointing_game")
