"""Which images a sample holds: a class-stratified, seeded order whose every prefix keeps the class
shares (so the first n images of a sorted folder are never all one class).

``stratified_order(labels, seed)`` is a permutation of the dataset's indices: each class's indices
are shuffled (seeded), item j of class c (n_c items) gets the key (j + 0.5) / n_c, and all items are
sorted by key (ties by class index). Any prefix of n items then holds round(n * n_c / N) of class c,
give or take one. Multilabel labels (N, K) are ordered by a seeded permutation alone (there is no
single class to stratify by). The audit's evaluation sample and the commands' ``--n`` both take a
prefix of this order, so their samples are nested and agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["describe_sample", "sample_indices", "stratified_order"]


def stratified_order(labels: Any, seed: int = 0) -> np.ndarray:
    """A permutation (N,) of ``range(N)`` whose prefixes keep the class shares (see the module)."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(y)
    if y.ndim != 1:
        return rng.permutation(n)
    keys = np.empty(n, dtype=np.float64)
    tie = np.empty(n, dtype=np.int64)
    for c, value in enumerate(np.unique(y)):
        idx = np.flatnonzero(y == value)
        idx = idx[rng.permutation(len(idx))]
        keys[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
        tie[idx] = c
    return np.lexsort((tie, keys))


def sample_indices(dataset: Any, n: int, seed: int = 0) -> tuple[list[int], str]:
    """The first ``n`` indices of ``dataset`` in the stratified order, and how they were drawn (in words)."""
    n = min(int(n), len(dataset))
    labels = getattr(dataset, "labels", None)
    if labels is None or len(labels) != len(dataset):
        return list(range(n)), f"the first {n} images (the dataset does not list its labels, so not stratified)"
    order = stratified_order(labels, seed)[:n]
    how = "a seeded random order" if np.asarray(labels).ndim != 1 else "stratified by class"
    return [int(i) for i in order], f"{n} of {len(dataset)} images, {how} (seed {seed})"


def describe_sample(dataset: Any, n: int, seed: int = 0) -> str:
    """How ``sample_indices`` draws ``n`` images, in words."""
    return sample_indices(dataset, n, seed)[1]
