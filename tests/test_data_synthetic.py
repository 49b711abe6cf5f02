"""Synthetic studies: determinism, lazy == eager, label/mask agreement, shares, shortcut statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medxai.data.synthetic import STUDIES, generate, generate_one
from medxai.data.synthetic._draw import GLYPH_R, grid, grid_half, upsample2
from medxai.errors import ConfigError

SINGLE = ("fundus-dr", "cxr-pneumonia", "skin-lesion")
CHANNELS = {"fundus-dr": 3, "cxr-pneumonia": 1, "cxr-multilabel": 1, "skin-lesion": 3}


def _abnormal(study: str, labels: np.ndarray) -> np.ndarray:
    if study == "cxr-multilabel":
        return (labels == 1).any(axis=1)
    if study == "skin-lesion":
        return labels == 1
    return labels > 0


def _same(a, b) -> bool:
    """Bytewise equality of two studies, NaN labels included."""
    return (a.images.tobytes() == b.images.tobytes() and a.masks.tobytes() == b.masks.tobytes()
            and a.labels.tobytes() == b.labels.tobytes() and a.ids == b.ids
            and all(a.extra_masks[k].tobytes() == b.extra_masks[k].tobytes() for k in a.extra_masks))


def test_studies_names():
    assert set(STUDIES) == {"fundus-dr", "cxr-pneumonia", "cxr-multilabel", "skin-lesion"}


@pytest.mark.parametrize("study", STUDIES)
def test_determinism_and_seed_sensitivity(study):
    a = generate(study, 6, size=40, seed=3, shortcut=0.8)
    b = generate(study, 6, size=40, seed=3, shortcut=0.8)
    assert _same(a, b)
    assert a.shortcut_present.tobytes() == b.shortcut_present.tobytes()
    assert a.shortcut_masks.tobytes() == b.shortcut_masks.tobytes()
    other = generate(study, 6, size=40, seed=4, shortcut=0.8)
    assert all(not np.array_equal(a.images[i], other.images[i]) for i in range(6))
    val = generate(study, 6, size=40, seed=3, split="val")
    assert all(not np.array_equal(a.images[i], val.images[i]) for i in range(6))
    # images differ from each other within a study (no template)
    flat = a.images.reshape(6, -1).astype(int)
    assert min(np.abs(flat[i] - flat[j]).mean() for i in range(6) for j in range(i)) > 1.0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(study=st.sampled_from(STUDIES), seed=st.integers(0, 2**40), index=st.integers(0, 10**7),
       split=st.sampled_from(["train", "val", "test"]))
def test_any_index_is_deterministic(study, seed, index, split):
    one = generate_one(study, index, size=24, seed=seed, split=split, shortcut=0.5)
    two = generate_one(study, index, size=24, seed=seed, split=split, shortcut=0.5)
    assert one["image"].tobytes() == two["image"].tobytes()
    assert one["mask"].tobytes() == two["mask"].tobytes()
    assert np.asarray(one["label"]).tobytes() == np.asarray(two["label"]).tobytes()
    assert one["shortcut_mask"].tobytes() == two["shortcut_mask"].tobytes()
    assert one["id"] == f"{study}-{split}-{index:06d}"


@pytest.mark.parametrize("study", STUDIES)
def test_generate_equals_stacked_generate_one(study):
    d = generate(study, 5, size=36, seed=11, split="test", shortcut=0.7, balanced=True)
    for i in range(5):
        one = generate_one(study, i, size=36, seed=11, split="test", shortcut=0.7, balanced=True)
        assert one["image"].tobytes() == d.images[i].tobytes()
        assert one["mask"].tobytes() == d.masks[i].tobytes()
        assert np.asarray(one["label"], d.labels.dtype).tobytes() == d.labels[i].tobytes()
        assert one["shortcut_present"] == d.shortcut_present[i]
        assert one["shortcut_mask"].tobytes() == d.shortcut_masks[i].tobytes()
        assert one["id"] == d.ids[i]
        for k, v in one["extra_masks"].items():
            assert v.tobytes() == d.extra_masks[k][i].tobytes()


@pytest.mark.parametrize("study", STUDIES)
def test_dtypes_shapes_and_range(study):
    d = generate(study, 4, size=33, seed=1)
    c = CHANNELS[study]
    assert d.images.dtype == np.uint8 and d.images.shape == (4, 33, 33, c)
    assert d.masks.dtype == bool
    assert d.masks.shape == ((4, 5, 33, 33) if study == "cxr-multilabel" else (4, 33, 33))
    assert d.task == {"fundus-dr": "ordinal", "cxr-pneumonia": "binary", "cxr-multilabel": "multilabel",
                      "skin-lesion": "multiclass"}[study]
    assert len(d.class_names) == (5 if study in ("fundus-dr", "cxr-multilabel") else 2 if study == "cxr-pneumonia"
                                  else 3)
    assert d.ids == [f"{study}-train-{i:06d}" for i in range(4)]
    assert d.shortcut_present is None and d.shortcut_masks is None
    for img in d.images:  # a real picture, not a flat field
        assert int(img.max()) - int(img.min()) > 120
    empty = generate(study, 0, size=20)
    assert empty.images.shape == (0, 20, 20, c) and len(empty) == 0


@pytest.mark.parametrize("study", STUDIES)
def test_labels_and_masks_agree(study):
    d = generate(study, 40, size=48, seed=5, balanced=True)
    if study == "cxr-multilabel":
        present = d.masks.any(axis=(2, 3))
        assert np.all(present[d.labels == 1])
        assert not np.any(present[d.labels == 0])
    elif study == "skin-lesion":
        assert d.masks.any(axis=(1, 2)).all()  # every class is a lesion
        ev = d.extra_masks["evidence"]
        assert np.array_equal(ev.any(axis=(1, 2)), d.labels == 1)
        assert not np.any(ev & ~d.masks)
    else:
        present = d.masks.any(axis=(1, 2))
        assert np.array_equal(present, d.labels > 0)


@pytest.mark.parametrize("study", STUDIES)
def test_masks_lie_on_the_drawn_lesions(study):
    """Against the same images rendered without lesions: identical outside the masks, different inside."""
    kw = {"size": 64, "seed": 2, "balanced": True, "shortcut": 0.5}
    d = generate(study, 24, **kw)
    twin = generate(study, 24, lesions=False, **kw)
    assert np.array_equal(d.labels, twin.labels, equal_nan=True) and np.array_equal(d.masks, twin.masks)
    union = d.masks.any(axis=1) if d.masks.ndim == 4 else d.masks
    diff = (d.images != twin.images).any(axis=-1)
    assert not np.any(diff & ~union)  # nothing changed outside the evidence
    assert not np.any(union & d.shortcut_masks)  # the marker is never evidence
    if study == "cxr-multilabel":
        for k in (0, 2, 3, 4):  # findings that add opacity: most of their pixels changed
            m = d.masks[:, k]
            if m.any():
                assert (diff & m).sum() / m.sum() > 0.8
        heart = d.masks[:, 1]
        for i in np.flatnonzero(heart.any(axis=(1, 2))):  # an enlarged heart changes pixels of the heart only
            assert (diff[i] & heart[i]).any()
    else:
        assert union.any()
        assert (diff & union).sum() / union.sum() > 0.85


def test_melanoma_evidence_marks_colour_variation():
    """Evidence pixels sit far from the lesion's typical colour; the rest of the lesion's core does not."""
    d = generate("skin-lesion", 30, size=64, seed=8, shares=[0, 1, 0])
    for img, les, ev in zip(d.images.astype(float), d.masks, d.extra_masks["evidence"], strict=True):
        core = ndimage.binary_erosion(les, iterations=2) & ~ndimage.binary_dilation(ev)
        dist = np.linalg.norm(img - np.median(img[core], axis=0), axis=-1)
        assert dist[ev].mean() > 1.5 * dist[core].mean()


def _within(count: int, n: int, p: float, k: float = 4.0) -> bool:
    return abs(count - n * p) <= k * np.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize(("study", "opts", "shares"), [
    ("fundus-dr", {}, (0.73, 0.07, 0.15, 0.025, 0.025)),
    ("fundus-dr", {"balanced": True}, (0.2,) * 5),
    ("fundus-dr", {"shares": [1, 1, 2, 0, 0]}, (0.25, 0.25, 0.5, 0, 0)),
    ("cxr-pneumonia", {}, (0.27, 0.73)),
    ("cxr-pneumonia", {"balanced": True}, (0.5, 0.5)),
    ("skin-lesion", {}, (0.752, 0.125, 0.123)),
    ("skin-lesion", {"balanced": True}, (1 / 3,) * 3),
])
def test_class_shares(study, opts, shares):
    n = 400
    d = generate(study, n, size=16, seed=21, **opts)
    counts = np.bincount(d.labels, minlength=len(shares))
    for c, p in zip(counts, shares, strict=True):
        assert _within(int(c), n, p), (counts, shares)
    if 0 in shares:
        assert counts[[i for i, p in enumerate(shares) if p == 0]].sum() == 0


def test_multilabel_vocabulary_prevalence_and_uncertain_share():
    n = 400
    d = generate("cxr-multilabel", n, size=16, seed=4)
    vals = d.labels
    assert set(np.unique(vals[~np.isnan(vals)])) <= {-1.0, 0.0, 1.0} and not np.isnan(vals).any()
    assert _within(int((vals == -1).sum()), n * 5, 0.1)
    # the reported positives follow the prevalence (0.3, 0.3, 0.25, 0.25, 0.3) times 1 - uncertain share
    for k, p in enumerate((0.3, 0.3, 0.25, 0.25, 0.3)):
        assert _within(int((vals[:, k] == 1).sum()), n, p * 0.9)
    d2 = generate("cxr-multilabel", n, size=16, seed=4, uncertain_share=0.3, blank_share=0.2, balanced=True)
    v2 = d2.labels
    assert _within(int((v2 == -1).sum()), n * 5, 0.3)
    assert _within(int(np.isnan(v2).sum()), n * 5, 0.2)
    assert _within(int((v2 == 1).sum()), n * 5, 0.5 * 0.5)
    # an uncertain label hides a present (subtler) finding about half the time here
    present = d2.masks.any(axis=(2, 3))
    assert _within(int(present[v2 == -1].sum()), int((v2 == -1).sum()), 0.5)


@pytest.mark.parametrize("study", STUDIES)
def test_shortcut_follows_label_in_train_and_not_in_test(study):
    n, p = 400, 0.9
    for split in ("train", "val"):
        d = generate(study, n, size=16, seed=9, split=split, shortcut=p, balanced=True)
        ab, s = _abnormal(study, d.labels), d.shortcut_present
        assert _within(int(s[ab].sum()), int(ab.sum()), p)
        assert _within(int(s[~ab].sum()), int((~ab).sum()), 1 - p)
        # phi coefficient against its value for this abnormal share q: (2p - 1) sqrt(q (1 - q) / (r (1 - r)))
        q = ab.mean()
        r = q * p + (1 - q) * (1 - p)
        phi = np.corrcoef(ab, s)[0, 1]
        assert abs(phi - (2 * p - 1) * np.sqrt(q * (1 - q) / (r * (1 - r)))) < 0.12
    t = generate(study, n, size=16, seed=9, split="test", shortcut=p, balanced=True)
    ab, s = _abnormal(study, t.labels), t.shortcut_present
    assert _within(int(s.sum()), n, 0.5)
    assert abs(np.corrcoef(ab, s)[0, 1]) < 0.2
    # the marker's pixels: present iff drawn, an "R" of the study's glyph colour
    assert np.array_equal(t.shortcut_masks.any(axis=(1, 2)), s)
    i = int(np.flatnonzero(s)[0])
    m = t.shortcut_masks[i]
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    crop = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert crop.shape == GLYPH_R.shape and np.array_equal(crop, GLYPH_R)  # 1 px cells at 16 px
    vals = t.images[i][m]
    assert (vals == vals[0]).all()


def test_shortcut_extremes_and_no_shortcut():
    d = generate("cxr-pneumonia", 60, size=16, shortcut=1.0, balanced=True)
    assert np.array_equal(d.shortcut_present, d.labels == 1)
    d0 = generate("cxr-pneumonia", 60, size=16, shortcut=0.0, balanced=True)
    assert np.array_equal(d0.shortcut_present, d0.labels == 0)
    one = generate_one("cxr-pneumonia", 3, size=16)
    assert one["shortcut_present"] is False and one["shortcut_mask"] is None


@pytest.mark.parametrize("size", [16, 17, 95, 97, 130])
def test_odd_and_small_sizes(size):
    for study in STUDIES:
        one = generate_one(study, 1, size=size, seed=1, balanced=True, shortcut=0.5)
        assert one["image"].shape[:2] == (size, size)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown synthetic study"):
        generate("mri-brain", 2)
    with pytest.raises(ConfigError, match="unknown option"):
        generate("fundus-dr", 2, size=16, colour="blue")
    with pytest.raises(ConfigError, match="uncertain_share"):
        generate("fundus-dr", 2, size=16, uncertain_share=0.2)
    with pytest.raises(ConfigError, match="split"):
        generate("fundus-dr", 2, size=16, split="holdout")
    with pytest.raises(ConfigError, match="shortcut"):
        generate("fundus-dr", 2, size=16, shortcut=1.5)
    with pytest.raises(ConfigError, match="size"):
        generate("fundus-dr", 2, size=8)
    with pytest.raises(ConfigError, match="shares"):
        generate("fundus-dr", 2, size=16, shares=[1, 2])
    with pytest.raises(ConfigError, match="balanced"):
        generate("skin-lesion", 2, size=16, shares=[1, 1, 1], balanced=True)
    with pytest.raises(ConfigError, match="uncertain_share"):
        generate("cxr-multilabel", 2, size=16, uncertain_share=0.8, blank_share=0.4)
    with pytest.raises(ConfigError, match="n must"):
        generate("fundus-dr", -1)
    with pytest.raises(ConfigError, match="index"):
        generate_one("fundus-dr", -3)


def test_upsample2_is_bilinear_and_keeps_zeros():
    for size in (16, 17, 40):
        hy, hx = grid_half(size)
        fy, fx = grid(size)
        lin = 0.3 * hy + 0.7 * hx  # a linear field is reproduced exactly away from the replicated edges
        up = upsample2(lin.astype(np.float32), size)
        ref = 0.3 * fy + 0.7 * fx
        assert np.allclose(up[1:-1, 1:-1], ref[1:-1, 1:-1], atol=1e-6)
        spot = np.zeros_like(hy)
        spot[3, 4] = 1.0
        u = upsample2(spot, size)
        assert set(zip(*np.nonzero(u), strict=True)) <= {(y, x) for y in range(5, 9) for x in range(7, 11)}
        assert u.max() == pytest.approx(0.5625)
