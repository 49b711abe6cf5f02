"""Spectral relevance analysis (SpRAy): cluster a test set's attribution maps to discover shortcuts.

Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and assessing what machines really learn",
Nature Communications 10:1096. Each map is reduced to a small, normalised thumbnail; the thumbnails
form a k-nearest-neighbour graph; the eigengap of its normalised Laplacian says how many well
separated groups (prediction strategies) there are, and spectral clustering finds them. A small
group whose mean map sits on a corner marker, a ruler or a text tag is a candidate "Clever Hans".

Pipeline (``spray``): mode ("abs" |a|, "positive" max(a, 0), "signed" a) -> sum over channels ->
area downsampling to ``size`` x ``size`` -> divide by the sum of |values| (an all-zero map stays
zero and is listed in ``zero_maps``) -> flatten -> binary kNN connectivity graph symmetrised as
max(A, A^T) -> smallest eigenvalues of the normalised Laplacian -> eigengap -> scikit-learn's
``SpectralClustering(affinity="precomputed")`` on the same graph.

Eigengap rule: with eigenvalues l_0 <= l_1 <= ... <= l_m (m = ``max_clusters``), the number of
clusters is k = argmax_{1 <= i < m} g_i + 1, so k in [2, max_clusters] (ties: the smallest k).
Default ``gap="relative"``: g_i = (l_{i+1} - l_i) / max(l_{i+1}, 0.05) (0 where l_{i+1} = 0; the floor
keeps a nearly disconnected third group, l = 0.006, from ending the count early); ``gap="absolute"``:
g_i = l_{i+1} - l_i, the paper's plain eigengap. Why relative by default: a group whose maps vary
continuously (a lesion at varying positions) makes a manifold-like kNN subgraph with its own small
eigenvalues (0.3 to 0.6), and their absolute gaps often exceed the gap that separates the groups, so
the absolute rule over-splits (on the synthetic two-strategy test it picked k = 2 in at most half of
the seeds); the relative gap is scale-free, equals 1 exactly when the graph has k disconnected components
(each of at least n_neighbors + 1 maps, so a real group), and found k = 2 and 3 on every seed tried.
The gap l_1 - l_0 ("one cluster") is not a candidate: SpRAy is run to split a test set and one cluster
says nothing about strategies; a single strategy shows as a small chosen gap and in ``eigenvalues``.
If the first m + 1 eigenvalues are all 0 (more components than ``max_clusters``), k = ``max_clusters``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.errors import InputError

__all__ = ["MODES", "SprayResult", "mean_map_per_class", "plot_spray", "spray"]

MODES = ("abs", "positive", "signed")
ASSIGN_LABELS = ("cluster_qr", "kmeans")
GAPS = ("relative", "absolute")
#: eigenvalues below this count as "very small" in the relative gap (von Luxburg 2007: choose k with
#: l_1..l_k all very small and l_{k+1} large): a nearly disconnected group (l = 0.006) is not
#: mistaken for the boundary when the next eigenvalue is only slightly larger
GAP_FLOOR = 0.05
_ZERO = 1e-10  # eigenvalues below this are taken as exactly 0 (one per connected component)
_DENSE_MAX = 2000  # up to this many maps the Laplacian's spectrum is computed densely, above with ARPACK


# ----------------------------------------------------------------------------------------------
# input handling


def _as_numpy_maps(maps: torch.Tensor | np.ndarray, name: str = "maps", min_n: int = 4) -> np.ndarray:
    """Validate (N, C, H, W) / (N, H, W) maps and return them as float64 (N, C, H, W) numpy (a copy)."""
    if isinstance(maps, torch.Tensor):
        if maps.is_complex():
            raise InputError(f"{name} must be real, got dtype {maps.dtype}")
        arr = maps.detach().to("cpu", torch.float64).numpy()
    elif isinstance(maps, np.ndarray):
        if not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)
                or maps.dtype == np.bool_):
            raise InputError(f"{name} must hold real numbers, got dtype {maps.dtype}")
        arr = np.array(maps, dtype=np.float64)
    else:
        raise InputError(f"{name} must be a torch.Tensor or numpy array, got {type(maps).__name__}")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise InputError(f"{name} must have shape (N, C, H, W) or (N, H, W), got {tuple(arr.shape)}")
    if arr.shape[0] < min_n:
        raise InputError(f"{name} has {arr.shape[0]} map(s); SpRAy needs at least {min_n}")
    if 0 in arr.shape[1:]:
        raise InputError(f"{name} is empty (shape {tuple(arr.shape)})")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise InputError(f"{name} contains {bad} NaN/Inf value(s); attribution maps must be finite")
    return arr


def _reduce(arr: np.ndarray, mode: str) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W): the mode's transform, then the sum over channels."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "abs":
        arr = np.abs(arr)
    elif mode == "positive":
        arr = np.maximum(arr, 0.0)
    return arr.sum(axis=1)


def _normalise(m: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Divide each map (N, ...) by its sum of |values|; all-zero maps stay zero. -> (maps, zero indices)."""
    flat = m.reshape(m.shape[0], -1)
    total = np.abs(flat).sum(axis=1)
    zero = total <= 0
    out = flat / np.where(zero, 1.0, total)[:, None]
    return out.reshape(m.shape), [int(i) for i in np.flatnonzero(zero)]


def _downsample(m: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, h, w) by area interpolation, h = min(size, H), w = min(size, W)."""
    h, w = min(size, m.shape[1]), min(size, m.shape[2])
    t = torch.from_numpy(m)[:, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="area")[:, 0].numpy()


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {value!r}")
    if not lo <= int(value) <= hi:
        raise InputError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return int(value)


def _as_1d(values: Any, n: int, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------------
# graph, spectrum, clustering


def _affinity(x: np.ndarray, n_neighbors: int):
    """Binary kNN connectivity graph of the rows of ``x`` (N, D), symmetrised as max(A, A^T) (CSR)."""
    from sklearn.neighbors import kneighbors_graph

    a = kneighbors_graph(x, n_neighbors=n_neighbors, mode="connectivity", include_self=False)
    return a.maximum(a.T).tocsr()


def _smallest_eigenvalues(affinity, count: int, seed: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the normalised Laplacian I - D^-1/2 A D^-1/2, ascending."""
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(affinity.astype(np.float64), normed=True)
    n = lap.shape[0]
    if n <= _DENSE_MAX:
        from scipy.linalg import eigh

        vals = eigh(lap.toarray(), eigvals_only=True, subset_by_index=[0, count - 1])
    else:
        from scipy.sparse import identity
        from scipy.sparse.linalg import eigsh

        # the smallest of L are the largest of 2I - L (spectrum of L lies in [0, 2])
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        top = eigsh(2.0 * identity(n, format="csr") - lap, k=count, which="LA", v0=v0, return_eigenvectors=False)
        vals = 2.0 - np.asarray(top)
    return np.sort(np.clip(np.asarray(vals, dtype=np.float64), 0.0, 2.0))


def _gaps(eigenvalues: np.ndarray, gap: str) -> np.ndarray:
    """g_i for i = 1 .. m-1 (entry j belongs to k = j + 2 clusters); see the module docstring."""
    ev = np.where(eigenvalues < _ZERO, 0.0, eigenvalues)
    gaps = np.diff(ev)[1:]
    if gap == "relative":
        upper = np.maximum(ev[2:], GAP_FLOOR)
        gaps = np.divide(gaps, upper, out=np.zeros_like(gaps), where=ev[2:] > 0)
    return gaps


def _eigengap(eigenvalues: np.ndarray, gap: str) -> tuple[int, float]:
    """k = argmax_{i >= 1} g_i + 1 (so k >= 2; ties: the smallest k) and that g_i."""
    gaps = _gaps(eigenvalues, gap)
    if not np.any(gaps > 0):  # all ~0: more disconnected groups than eigenvalues looked at
        return len(eigenvalues) - 1, 0.0
    i = int(np.argmax(gaps))
    return i + 2, float(gaps[i])


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by size, 0 = largest (ties: the cluster whose first member comes first)."""
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(uniq)), key=lambda j: (-counts[j], first[j]))
    new = np.empty(int(uniq.max()) + 1, dtype=np.int64)
    for rank, j in enumerate(order):
        new[uniq[j]] = rank
    return new[labels]


def _cluster(affinity, n_clusters: int, seed: int, assign_labels: str) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                            assign_labels=assign_labels)
    with warnings.catch_warnings():
        # a kNN graph of well separated strategies is disconnected: exactly the case SpRAy looks for
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        warnings.filterwarnings("ignore", message="Array is not symmetric")
        return np.asarray(sc.fit_predict(affinity), dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# result


@dataclass
class SprayResult:
    """Result of ``spray``: cluster labels (N,) numbered by size (0 = largest), the Laplacian's
    smallest ``max_clusters + 1`` eigenvalues, the chosen eigengap, per-cluster mean thumbnails
    (n_clusters, h, w), the indices of all-zero maps, and ``features``: the normalised downsampled
    maps (N, h, w) the clustering ran on."""

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    eigengap: float
    embedding_size: tuple[int, int]
    mean_maps: np.ndarray
    zero_maps: list[int]
    features: np.ndarray = field(repr=False)

    def example_indices(self, cluster: int, n_examples: int = 4) -> list[int]:
        """Indices of the ``n_examples`` members of ``cluster`` closest (L2) to its mean map (ties: lower index)."""
        members = np.flatnonzero(self.labels == cluster)
        d = np.linalg.norm((self.features[members] - self.mean_maps[cluster]).reshape(len(members), -1), axis=1)
        return [int(members[j]) for j in np.argsort(d, kind="stable")[:max(0, n_examples)]]

    def clusters(self, y_true: Any = None, y_pred: Any = None, ids: Any = None, n_examples: int = 4) -> list[dict]:
        """One dict per cluster (in cluster order): ``cluster``, ``size``, ``share`` of all images,
        ``accuracy`` (mean of y_true == y_pred in it; None unless both are given), ``label_counts``
        (of y_true) and ``pred_counts`` (of y_pred), {} when not given, and ``examples``: the ids
        (``ids[i]``, default the index i) of the ``n_examples`` images closest to its mean map."""
        n = len(self.labels)
        yt = None if y_true is None else _as_1d(y_true, n, "y_true")
        yp = None if y_pred is None else _as_1d(y_pred, n, "y_pred")
        id_list = list(range(n)) if ids is None else _as_1d(ids, n, "ids").tolist()
        out = []
        for c in range(self.n_clusters):
            m = self.labels == c
            acc = None if yt is None or yp is None else float(np.mean(yt[m] == yp[m]))
            out.append({
                "cluster": c,
                "size": int(m.sum()),
                "share": float(m.mean()),
                "accuracy": acc,
                "label_counts": {} if yt is None else dict(sorted(Counter(yt[m].tolist()).items())),
                "pred_counts": {} if yp is None else dict(sorted(Counter(yp[m].tolist()).items())),
                "examples": [id_list[i] for i in self.example_indices(c, n_examples)],
            })
        return out

    def to_dict(self) -> dict:
        """JSON-able summary (lists, ints, floats); ``features`` is left out, cluster sizes added."""
        return {
            "labels": [int(v) for v in self.labels],
            "n_clusters": int(self.n_clusters),
            "sizes": [int((self.labels == c).sum()) for c in range(self.n_clusters)],
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "eigengap": float(self.eigengap),
            "embedding_size": [int(v) for v in self.embedding_size],
            "mean_maps": np.asarray(self.mean_maps, dtype=np.float64).tolist(),
            "zero_maps": [int(v) for v in self.zero_maps],
        }


# ----------------------------------------------------------------------------------------------
# public API


def spray(maps: torch.Tensor | np.ndarray, *, size: int = 16, mode: str = "abs", n_clusters: int | None = None,
          max_clusters: int = 8, n_neighbors: int | None = None, seed: int = 0,
          gap: str = "relative", assign_labels: str = "cluster_qr") -> SprayResult:
    """SpRAy (Lapuschkin et al. 2019, Nat. Commun. 10:1096) over attribution maps (N, C, H, W) or (N, H, W).

    ``mode``: "abs" (default), "positive" or "signed" relevance, summed over channels; thumbnails of
    ``size`` x ``size`` (area interpolation, never upsampled), each divided by its sum of |values|.
    kNN graph with ``n_neighbors`` (default ceil(sqrt(N)), at most N-1). ``n_clusters`` None: chosen by
    the largest eigengap among the first ``max_clusters`` + 1 eigenvalues (k in [2, max_clusters]; ``gap``
    "relative" (default) or "absolute", see the module docstring); else fixed in [2, N-1] (``eigengap`` is
    then the gap after l_{k-1}, NaN beyond the computed spectrum). ``assign_labels``: "cluster_qr" (default:
    deterministic, no random initialisation) or "kmeans" (seeded with ``seed``).
    """
    arr = _as_numpy_maps(maps)
    n = arr.shape[0]
    size = _check_int(size, "size", 1, 1 << 16)
    if assign_labels not in ASSIGN_LABELS:
        raise InputError(f"assign_labels must be one of {ASSIGN_LABELS}, got {assign_labels!r}")
    if gap not in GAPS:
        raise InputError(f"gap must be one of {GAPS}, got {gap!r}")
    m = _reduce(arr, mode)
    if n_clusters is not None:
        n_clusters = _check_int(n_clusters, "n_clusters", 2, n - 1)
    max_clusters = _check_int(max_clusters, "max_clusters", 2, 1 << 16)
    k_nn = min(math.ceil(math.sqrt(n)), n - 1) if n_neighbors is None else _check_int(
        n_neighbors, "n_neighbors", 1, n - 1)

    feats, zero = _normalise(_downsample(m, size))
    affinity = _affinity(feats.reshape(n, -1), k_nn)
    n_eig = min(max_clusters + 1, n)
    eigenvalues = _smallest_eigenvalues(affinity, n_eig, seed)
    auto_k, chosen_gap = _eigengap(eigenvalues, gap)
    if n_clusters is None:
        n_clusters = min(auto_k, n - 1)
    else:
        gaps = _gaps(eigenvalues, gap)  # the gap after l_{k-1}, when within the computed spectrum
        chosen_gap = float(gaps[n_clusters - 2]) if n_clusters - 2 < len(gaps) else float("nan")
    labels = _by_size(_cluster(affinity, n_clusters, seed, assign_labels))
    n_found = int(labels.max()) + 1  # spectral clustering may leave a requested cluster empty
    mean_maps = np.stack([feats[labels == c].mean(axis=0) for c in range(n_found)])
    return SprayResult(labels=labels, n_clusters=n_found, eigenvalues=eigenvalues, eigengap=chosen_gap,
                       embedding_size=(int(feats.shape[1]), int(feats.shape[2])), mean_maps=mean_maps,
                       zero_maps=zero, features=feats)


def mean_map_per_class(maps: torch.Tensor | np.ndarray, labels: Any, class_names: list[str], *,
                       mode: str = "abs") -> dict[str, np.ndarray]:
    """Mean normalised map (H, W) per class: maps (N, C, H, W) / (N, H, W) reduced with ``mode`` and
    summed over channels at full resolution, each divided by its sum of |values| (zero maps stay
    zero), averaged over the images whose ``labels`` (N,) int is that class's index in
    ``class_names``. Classes without images are left out."""
    arr = _as_numpy_maps(maps, min_n=1)
    n = arr.shape[0]
    lab = _as_1d(labels, n, "labels")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise InputError(f"labels must be class indices (integers), got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if lab.min() < 0 or lab.max() >= len(class_names):
        raise InputError(f"labels out of range for {len(class_names)} class names: [{lab.min()}, {lab.max()}]")
    norm, _ = _normalise(_reduce(arr, mode))
    return {str(name): norm[lab == c].mean(axis=0) for c, name in enumerate(class_names) if (lab == c).any()}


def _cluster_title(info: dict, n: int) -> str:
    title = f"cluster {info['cluster']}: {info['size']}/{n} ({100 * info['share']:.0f}%)"
    if info["accuracy"] is not None:
        title += f", acc {100 * info['accuracy']:.0f}%"
    return title


def plot_spray(result: SprayResult, images: torch.Tensor, maps: torch.Tensor | np.ndarray, path: str | Path,
               ids: Any = None, n_examples: int = 4, *, y_true: Any = None, y_pred: Any = None,
               mode: str = "abs") -> Path:
    """PNG of the clusters: one row per cluster with its mean thumbnail, then up to ``n_examples``
    images (N, C, H, W) in [0, 1] closest to that mean with their map (reduced with ``mode``)
    overlaid. Row titles give size, share and (with ``y_true`` and ``y_pred``) accuracy; example
    titles give ``ids`` (default the index). Matplotlib Agg, no mathtext. Returns ``path``."""
    from medxai._util.plot import plain_text

    return plain_text(_plot_spray)(result, images, maps, Path(path), ids, n_examples, y_true, y_pred, mode)


def _plot_spray(result: SprayResult, images: torch.Tensor, maps: Any, path: Path, ids: Any, n_examples: int,
                y_true: Any, y_pred: Any, mode: str) -> Path:
    from matplotlib.figure import Figure

    from medxai._util.io import atomic_write
    from medxai.explain.visualize import overlay

    n = len(result.labels)
    m = _reduce(_as_numpy_maps(maps, min_n=1), mode)
    imgs = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if m.shape[0] != n or imgs.shape[0] != n:
        raise InputError(f"images ({imgs.shape[0]}) and maps ({m.shape[0]}) must have one row per clustered map ({n})")
    n_examples = _check_int(n_examples, "n_examples", 0, n)
    infos = result.clusters(y_true, y_pred, ids, n_examples)
    rows, cols = result.n_clusters, 1 + n_examples
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows), dpi=100, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for c, info in enumerate(infos):
        axes[c, 0].imshow(result.mean_maps[c], cmap="magma", interpolation="nearest")
        axes[c, 0].set_title(_cluster_title(info, n), fontsize=7, loc="left")
        axes[c, 0].set_ylabel("mean map", fontsize=7)
        for j, i in enumerate(result.example_indices(c, n_examples)):
            axes[c, 1 + j].imshow(overlay(imgs[i].float(), m[i]))
            axes[c, 1 + j].set_title(str(info["examples"][j]), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(ax.has_data())
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path
