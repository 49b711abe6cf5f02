"""Samples are prefixes of a class-stratified seeded order: never one class because a folder is sorted."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medxai.data import write_synthetic
from medxai.data.sampling import sample_indices, stratified_order


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=2, max_size=5), n=st.integers(1, 60), seed=st.integers(0, 9))
def test_every_prefix_keeps_the_class_shares(counts, n, seed):
    y = np.repeat(np.arange(len(counts)), counts)  # sorted, as a folder layout lists its images
    order = stratified_order(y, seed)
    assert sorted(order.tolist()) == list(range(len(y)))
    n = min(n, len(y))
    got = np.bincount(y[order[:n]], minlength=len(counts))
    want = n * np.asarray(counts) / len(y)
    assert np.all(np.abs(got - want) <= 1.0 + 1e-9)


def test_order_is_seeded_and_multilabel_is_a_permutation():
    y = np.array([0] * 10 + [1] * 30)
    assert np.array_equal(stratified_order(y, 3), stratified_order(y, 3))
    assert not np.array_equal(stratified_order(y, 3), stratified_order(y, 4))
    ml = np.zeros((12, 3))
    assert sorted(stratified_order(ml, 0).tolist()) == list(range(12))


def test_the_first_images_of_a_sorted_folder_are_not_one_class(tmp_path):
    from medxai.cli._app import first_items
    from medxai.data import open_dataset
    from medxai.pipeline.data import eval_sample

    write_synthetic("cxr-pneumonia", tmp_path / "d", {"test": 30}, size=16, seed=0)
    ds = open_dataset(tmp_path / "d", split="test")
    assert len(set(ds.labels[:5].tolist())) == 1  # the folder order: NORMAL first
    idx, how = sample_indices(ds, 6, seed=0)
    assert len({int(ds.labels[i]) for i in idx}) == 2 and "stratified by class (seed 0)" in how
    s = eval_sample(ds, 10, seed=0)
    _, items, _ = first_items(str(tmp_path / "d"), "test", 6, None)
    assert [it["id"] for it in items] == s.ids[:6]  # --n and the audit draw nested samples
    assert s.extra["how"].startswith("10 of 30 images")
