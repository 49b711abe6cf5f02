"""SpRAy (medxai.metrics.spray): recovering known strategies from synthetic attribution maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import adjusted_rand_score

import medxai.metrics.spray as spray_mod
from medxai.errors import InputError
from medxai.metrics.spray import SprayResult, mean_map_per_class, plot_spray, spray

H = 32
MARKER, LESION = (4.0, 4.0), (16.0, 16.0)
CORNERS = [(4.0, 4.0), (4.0, 27.0), (27.0, 4.0)]


def _blob(cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :H]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _maps(seed: int, centres, jitter, n: int = 40, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """n maps (n, H, W): map i has a Gaussian blob at centres[i % K] +- jitter[i % K] plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(centres)
    maps = []
    for c in y:
        cy, cx = centres[c]
        j = jitter[c]
        blob = _blob(cy + rng.uniform(-j, j), cx + rng.uniform(-j, j), rng.uniform(2.0, 4.0))
        maps.append(blob + noise * rng.standard_normal((H, H)))
    return np.stack(maps), y


def _two_modes(seed: int, n: int = 40, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Half "marker" (top-left corner, +-1 px), half "lesion" (near the centre, +-4 px)."""
    return _maps(seed, [MARKER, LESION], [1.0, 4.0], n=n, noise=noise)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("noise", [0.05, 0.2])
def test_two_strategies_found(seed, noise):
    maps, y = _two_modes(seed, noise=noise)
    r = spray(maps)
    assert r.n_clusters == 2
    assert adjusted_rand_score(y, r.labels) >= 0.9
    assert r.embedding_size == (16, 16)
    assert r.eigenvalues.shape == (9,)
    assert np.all(np.diff(r.eigenvalues) >= -1e-12)
    assert r.eigenvalues[0] == pytest.approx(0.0, abs=1e-9)
    # the marker cluster's mean map peaks in the top-left corner of the 16x16 thumbnail
    marker = int(np.bincount(r.labels[y == 0]).argmax())
    peak = np.unravel_index(np.argmax(r.mean_maps[marker]), r.mean_maps[marker].shape)
    assert peak[0] <= 3 and peak[1] <= 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_strategies_found(seed):
    maps, y = _maps(seed, CORNERS, [1.0, 1.0, 1.0], n=42, noise=0.2)
    r = spray(maps)
    assert r.n_clusters == 3
    assert adjusted_rand_score(y, r.labels) >= 0.9
    assert r.mean_maps.shape == (3, 16, 16)
    np.testing.assert_allclose(np.abs(r.mean_maps.reshape(3, -1)).sum(1), 1.0, rtol=1e-9)


def test_absolute_gap_rule_and_fixed_k():
    maps, _ = _maps(0, CORNERS, [1.0, 1.0, 1.0], n=42, noise=0.2)
    r = spray(maps, gap="absolute")
    ev = r.eigenvalues
    gaps = np.diff(ev)[1:]
    assert r.n_clusters == int(np.argmax(gaps)) + 2
    assert r.eigengap == pytest.approx(gaps.max())
    fixed = spray(maps, n_clusters=3)
    assert fixed.n_clusters == 3
    assert fixed.eigengap == pytest.approx((ev[3] - ev[2]) / ev[3])
    np.testing.assert_array_equal(fixed.labels, spray(maps).labels)


def test_deterministic_and_torch_matches_numpy():
    maps, _ = _two_modes(3)
    a, b = spray(maps, seed=5), spray(maps, seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    t = spray(torch.from_numpy(maps).float()[:, None].repeat(1, 3, 1, 1) / 3)  # (N, 3, H, W), channel-summed
    assert adjusted_rand_score(a.labels, t.labels) == 1.0
    k = spray(maps, seed=5, assign_labels="kmeans")
    np.testing.assert_array_equal(k.labels, spray(maps, seed=5, assign_labels="kmeans").labels)


def test_scale_invariance():
    maps, _ = _two_modes(1)
    r = spray(maps)
    for c in (3.7, 1e-4, 250.0):
        np.testing.assert_array_equal(spray(maps * c).labels, r.labels)


def test_positive_mode_ignores_negative_relevance():
    """Positive relevance in two strategies, negative relevance on a random corner: "positive" sees only the former."""
    pos, y = _two_modes(4)
    rng = np.random.default_rng(0)
    away = [(4.0, 27.0), (27.0, 4.0), (27.0, 27.0)]  # corners away from both positive strategies
    neg = np.stack([_blob(*away[i], 3.0) for i in rng.integers(0, 3, len(y))]) * 3.0
    maps = np.clip(pos, 0, None) - neg
    r = spray(maps, mode="positive")
    assert r.n_clusters == 2 and adjusted_rand_score(y, r.labels) >= 0.9
    assert adjusted_rand_score(y, spray(maps, mode="abs").labels) < 0.9


def test_cluster_numbering_accuracy_and_examples():
    # 26 marker maps and 14 lesion maps: cluster 0 must be the marker group
    maps, _ = _maps(7, [MARKER] * 13 + [LESION] * 7, [1.0] * 13 + [4.0] * 7, n=40)
    y = np.array([0 if c < 13 else 1 for c in np.arange(40) % 20])
    r = spray(maps)
    assert r.n_clusters == 2
    assert (r.labels == 0).sum() == 26 and adjusted_rand_score(y, r.labels) == 1.0
    assert np.all(r.labels[y == 0] == 0)
    y_true = np.arange(40) % 2
    y_pred = y_true.copy()
    y_pred[[0, 1, 2]] = 1 - y_pred[[0, 1, 2]]  # three wrong, all in the marker group (indices 0-2)
    y_pred[np.flatnonzero(y == 1)[0]] = 1 - y_pred[np.flatnonzero(y == 1)[0]]  # one wrong in the lesion group
    ids = [f"img{i:02d}" for i in range(40)]
    info = r.clusters(y_true, torch.from_numpy(y_pred), ids, n_examples=3)
    assert [c["size"] for c in info] == [26, 14]
    assert info[0]["share"] == pytest.approx(26 / 40)
    assert info[0]["accuracy"] == pytest.approx(23 / 26)
    assert info[1]["accuracy"] == pytest.approx(13 / 14)
    assert info[0]["label_counts"] == {0: int((y_true[y == 0] == 0).sum()), 1: int((y_true[y == 0] == 1).sum())}
    assert sum(info[1]["pred_counts"].values()) == 14
    members = {0: {ids[i] for i in np.flatnonzero(r.labels == 0)}, 1: {ids[i] for i in np.flatnonzero(r.labels == 1)}}
    for c in info:
        assert len(c["examples"]) == 3 and set(c["examples"]) <= members[c["cluster"]]
    # the examples are the members nearest to the mean map
    d = np.linalg.norm((r.features - r.mean_maps[1]).reshape(40, -1), axis=1)
    d[r.labels != 1] = np.inf
    assert info[1]["examples"] == [ids[i] for i in np.argsort(d, kind="stable")[:3]]
    bare = r.clusters()
    assert bare[0]["accuracy"] is None and bare[0]["label_counts"] == {} and bare[0]["examples"][0] in range(40)
    json.dumps(r.to_dict())
    assert r.to_dict()["sizes"] == [26, 14]


def test_zero_maps_are_listed_and_kept():
    maps, y = _two_modes(2)
    maps[[5, 17]] = 0.0
    r = spray(maps)
    assert r.zero_maps == [5, 17]
    assert r.labels.shape == (40,)
    assert np.all(r.features[[5, 17]] == 0.0)
    assert adjusted_rand_score(np.delete(y, [5, 17]), np.delete(r.labels, [5, 17])) >= 0.9


def test_mean_map_per_class_by_hand():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((9, 2, 5, 6))
    maps[4] = 0.0
    labels = np.array([0, 2, 0, 2, 0, 2, 2, 0, 0])
    out = mean_map_per_class(torch.from_numpy(maps), labels, ["a", "b", "c"])
    assert set(out) == {"a", "c"}  # "b" has no image
    a = np.abs(maps).sum(1)
    s = a.sum((1, 2), keepdims=True)
    norm = np.divide(a, s, out=np.zeros_like(a), where=s > 0)
    np.testing.assert_allclose(out["a"], norm[labels == 0].mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["c"], norm[labels == 2].mean(0), rtol=1e-12)
    assert out["c"].sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="out of range"):
        mean_map_per_class(maps, np.array([0, 1, 2, 3, 0, 0, 0, 0, 0]), ["a", "b", "c"])


def test_bad_input():
    maps, _ = _two_modes(0)
    with pytest.raises(InputError, match="at least 4"):
        spray(maps[:3])
    bad = maps.copy()
    bad[0, 0, 0], bad[1, 2, 3], bad[2, 1, 1] = np.nan, np.inf, -np.inf
    with pytest.raises(InputError, match="3 NaN/Inf"):
        spray(bad)
    with pytest.raises(InputError, match="mode"):
        spray(maps, mode="squared")
    for k in (1, 40, 0):
        with pytest.raises(InputError, match="n_clusters"):
            spray(maps, n_clusters=k)
    with pytest.raises(InputError, match="shape"):
        spray(maps[0])
    with pytest.raises(InputError, match="gap"):
        spray(maps, gap="ratio")
    with pytest.raises(InputError, match="n_neighbors"):
        spray(maps, n_neighbors=40)
    with pytest.raises(InputError, match=r"must be a torch\.Tensor or numpy"):
        spray(maps.tolist())


def test_sparse_spectrum_matches_dense(monkeypatch):
    maps, _ = _two_modes(0)
    dense = spray(maps)
    monkeypatch.setattr(spray_mod, "_DENSE_MAX", 0)
    sparse = spray(maps)
    np.testing.assert_allclose(sparse.eigenvalues, dense.eigenvalues, atol=1e-8)
    np.testing.assert_array_equal(sparse.labels, dense.labels)


def test_plot_spray_writes_png(tmp_path):
    maps, y = _maps(0, CORNERS, [1.0, 1.0, 1.0], n=24, noise=0.1)
    r = spray(maps, n_clusters=3)
    images = torch.rand(24, 1, H, H)
    ids = [f"$x_{i}" for i in range(24)]  # a "$" must not be parsed as mathtext
    path = plot_spray(r, images, torch.from_numpy(maps), tmp_path / "spray.png", ids=ids, n_examples=3,
                      y_true=y, y_pred=y)
    assert path == tmp_path / "spray.png"
    with Image.open(path) as im:
        im.load()
        w, h = im.size
    assert w >= 300 and h >= 300  # 3 rows x 4 columns of panels
    with pytest.raises(InputError, match="one row per clustered map"):
        plot_spray(r, images[:5], maps, tmp_path / "bad.png")


def test_result_type():
    r = spray(_two_modes(0)[0])
    assert isinstance(r, SprayResult) and r.labels.dtype == np.int64 and r.labels.min() == 0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), data_seed=st.integers(0, 2))
def test_permutation_equivariance(seed, data_seed):
    maps, _ = _two_modes(data_seed, noise=0.2)
    perm = np.random.default_rng(seed).permutation(len(maps))
    assert adjusted_rand_score(spray(maps[perm]).labels, spray(maps).labels[perm]) == 1.0
