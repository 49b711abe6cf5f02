"""medxai.evaluate.classification against scikit-learn, bootstrap replicates, ECE, one-class labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medxai.errors import InputError
from medxai.evaluate import classification, expected_calibration_error
from medxai.evaluate.metrics import bootstrap_index_chunks, weighted_auc


def _single(seed: int, n: int, k: int, signal: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def _ece_loop(conf, correct, bins=15):
    """Independent ECE: explicit loop over (lo, hi] bins, the first bin closed at 0."""
    n, total = len(conf), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [(c > lo or (b == 0 and c >= 0)) and c <= hi for c in conf]
        sel = np.array(sel)
        if sel.any():
            total += sel.sum() / n * abs(np.mean(np.asarray(correct)[sel]) - np.mean(np.asarray(conf)[sel]))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_sklearn(seed):
    y, p = _single(seed, 150, 2)
    r = classification(y, p, "binary", ["neg", "pos"], n_boot=0)
    m, pred = r["metrics"], p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, p[:, 1]), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    assert m["precision"] == pytest.approx(precision_score(y, pred), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    assert r["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert m["ece"] == pytest.approx(_ece_loop(p.max(1), pred == y), abs=1e-12)
    # (N,) scores of class 1 are the same thing
    r1 = classification(y, p[:, 1], "binary", n_boot=0)
    assert r1["metrics"]["auc"] == m["auc"] and r1["metrics"]["accuracy"] == m["accuracy"]


@pytest.mark.parametrize(("task", "k", "seed"), [("multiclass", 3, 0), ("multiclass", 4, 1), ("ordinal", 5, 2)])
def test_multiclass_and_ordinal_match_sklearn(task, k, seed):
    y, p = _single(seed, 300, k, signal=1.0)
    r = classification(y, p, task, n_boot=0)
    m, pred = r["metrics"], p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    ap = np.mean([average_precision_score(y == j, p[:, j]) for j in range(k)])
    assert m["ap_macro"] == pytest.approx(ap, abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    rec = recall_score(y, pred, average=None)
    cm = confusion_matrix(y, pred)
    for j in range(k):
        row = r["per_class"][str(j)]
        assert row["sensitivity"] == pytest.approx(rec[j], abs=1e-12)
        spec = (cm.sum() - cm[j].sum() - cm[:, j].sum() + cm[j, j]) / (cm.sum() - cm[j].sum())
        assert row["specificity"] == pytest.approx(spec, abs=1e-12)
        assert row["auc"] == pytest.approx(roc_auc_score(y == j, p[:, j]), abs=1e-12)
    assert r["confusion_matrix"] == cm.tolist()
    assert m["ece"] == pytest.approx(_ece_loop(p.max(1), pred == y), abs=1e-12)


def test_kappa_uses_all_classes_even_when_one_is_absent():
    # class 1 of 3 never occurs: the quadratic weights must still use distances on 0..2
    y = np.array([0, 0, 2, 2, 2, 0])
    p = np.eye(3)[[0, 2, 2, 0, 2, 0]]
    r = classification(y, p, "ordinal", n_boot=0)
    assert r["metrics"]["kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(y, p.argmax(1), labels=[0, 1, 2], weights="quadratic"), abs=1e-12)
    assert r["skipped"]["auc"][0]["label"] == "1"
    # hand computation: O = [[2,0,1],[0,0,0],[1,0,2]], weights (i-j)^2, E = outer(rows, cols) / 6
    o = np.array([[2, 0, 1], [0, 0, 0], [1, 0, 2]], float)
    w = (np.arange(3)[:, None] - np.arange(3)) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / 6
    assert r["metrics"]["kappa_quadratic"] == pytest.approx(1 - (w * o).sum() / (w * e).sum(), abs=1e-12)


def test_multilabel_nan_ignored_and_one_class_label_skipped_and_named():
    rng = np.random.default_rng(3)
    n, names = 200, ["Atelectasis", "Cardiomegaly", "Edema", "Effusion"]
    y = rng.integers(0, 2, (n, 4)).astype(float)
    s = np.clip(0.35 * y + rng.random((n, 4)) * 0.65, 0, 1)
    y[rng.random((n, 4)) < 0.25] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # Edema: labelled samples are all negative
    r = classification(y, s, "multilabel", names, n_boot=200, seed=1)
    assert r["skipped"]["auc"] == [{"label": "Edema", "reason": r["skipped"]["auc"][0]["reason"]}]
    assert "only one class" in r["skipped"]["auc"][0]["reason"]
    assert r["per_class"]["Edema"]["auc"] is None
    aucs = []
    for j, name in enumerate(names):
        v = ~np.isnan(y[:, j])
        t, sj = y[v, j], s[v, j]
        pred = (sj >= 0.5).astype(int)
        row = r["per_class"][name]
        assert row["n_labelled"] == v.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(t, pred), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(t, pred, zero_division=0), abs=1e-12)
        assert r["confusion_matrix"][name] == confusion_matrix(t, pred, labels=[0, 1]).tolist()
        if j != 2:
            aucs.append(roc_auc_score(t, sj))
            assert row["auc"] == pytest.approx(aucs[-1], abs=1e-12)
            assert row["ap"] == pytest.approx(average_precision_score(t, sj), abs=1e-12)
            assert row["auc_ci"]["low"] <= row["auc"] <= row["auc_ci"]["high"]
    assert r["metrics"]["auc_macro"] == pytest.approx(np.mean(aucs), abs=1e-12)
    lo, hi = r["ci"]["auc_macro"]["low"], r["ci"]["auc_macro"]["high"]
    assert lo < r["metrics"]["auc_macro"] < hi
    # pooled ECE over labelled entries
    v = ~np.isnan(y)
    conf = np.maximum(s, 1 - s)[v]
    corr = ((s >= 0.5) == (y == 1))[v]
    assert r["metrics"]["ece"] == pytest.approx(_ece_loop(conf, corr), abs=1e-12)


def test_bootstrap_deterministic_by_seed_and_contains_point():
    y, p = _single(5, 250, 3, signal=1.0)
    a = classification(y, p, "multiclass", n_boot=300, seed=7)
    b = classification(y, p, "multiclass", n_boot=300, seed=7)
    c = classification(y, p, "multiclass", n_boot=300, seed=8)
    assert a["ci"] == b["ci"]
    assert a["ci"]["accuracy"] != c["ci"]["accuracy"]
    for key in ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc_macro", "f1_macro"):
        ci = a["ci"][key]
        assert ci["n_valid"] == 300 and ci["level"] == 0.95
        assert ci["low"] < a["metrics"][key] < ci["high"], key
        assert ci["high"] - ci["low"] < 0.25


def test_bootstrap_replicates_equal_sklearn_on_the_same_resamples():
    from medxai.evaluate.metrics import _bootstrap_single

    y, p = _single(11, 120, 2, signal=1.0)
    reps = _bootstrap_single(y, p, "binary", [0, 1], 60, seed=3)
    idx = np.concatenate(list(bootstrap_index_chunks(120, 60, 3)))
    for b in (0, 1, 17, 59):
        yb, pb = y[idx[b]], p[idx[b]]
        pred = pb.argmax(1)
        assert reps["accuracy"][b] == pytest.approx(accuracy_score(yb, pred), abs=1e-12)
        assert reps["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, pred), abs=1e-12)
        assert reps["kappa_quadratic"][b] == pytest.approx(cohen_kappa_score(yb, pred, weights="quadratic"),
                                                           abs=1e-12)
        assert reps["auc"][b] == pytest.approx(roc_auc_score(yb, pb[:, 1]), abs=1e-12)
        assert reps["sensitivity"][b] == pytest.approx(recall_score(yb, pred), abs=1e-12)
        assert reps["specificity"][b] == pytest.approx(recall_score(yb, pred, pos_label=0), abs=1e-12)
        assert reps["f1"][b] == pytest.approx(f1_score(yb, pred), abs=1e-12)

    y3, p3 = _single(12, 90, 4, signal=0.8)
    reps = _bootstrap_single(y3, p3, "ordinal", [0, 1, 2, 3], 50, seed=4)
    idx = np.concatenate(list(bootstrap_index_chunks(90, 50, 4)))
    for b in (0, 33):
        yb, pb = y3[idx[b]], p3[idx[b]]
        pred = pb.argmax(1)
        assert reps["f1_macro"][b] == pytest.approx(f1_score(yb, pred, average="macro"), abs=1e-12)
        assert reps["kappa_quadratic"][b] == pytest.approx(
            cohen_kappa_score(yb, pred, labels=[0, 1, 2, 3], weights="quadratic"), abs=1e-12)
        if len(np.unique(yb)) == 4:
            assert reps["auc_macro"][b] == pytest.approx(roc_auc_score(yb, pb, multi_class="ovr"), abs=1e-12)


def test_weighted_auc_with_ties_equals_sklearn_on_repeated_samples():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40) / 4.0  # many ties
    lab = rng.random(40) < 0.4
    w = rng.integers(0, 3, (3, 40)).astype(float)
    got = weighted_auc(s, lab, w)
    for b in range(3):
        rep = np.repeat(np.arange(40), w[b].astype(int))
        assert got[b] == pytest.approx(roc_auc_score(lab[rep], s[rep]), abs=1e-12)
    assert np.isnan(weighted_auc(s, np.zeros(40, bool), w)).all()


def test_ece_analytic():
    # two bins used: conf 0.95 (all right) and 0.55 (half right): ECE = .5*.05 + .5*.05
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    assert expected_calibration_error(conf, np.array([1, 1, 1, 0])) == pytest.approx(0.05, abs=1e-12)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(0.0)


def test_refuses_bad_input():
    with pytest.raises(InputError, match="probabilities"):
        classification([0, 1], [[0.5, 1.5], [0.5, 0.5]], "binary")
    with pytest.raises(InputError, match="task"):
        classification([0, 1], [[0.5, 0.5], [0.5, 0.5]], "regression")
    with pytest.raises(InputError, match="outside"):
        classification([0, 3], [[0.5, 0.5], [0.5, 0.5]], "multiclass")
    for bad in (-1.0, 1.5):  # CheXpert's uncertain -1 needs a policy first; > 1 is no probability
        with pytest.raises(InputError, match=r"0, 1, NaN \(ignored\) or soft targets.*uncertainty policy"):
            classification([[bad, 1]], [[0.5, 0.5]], "multilabel")
    with pytest.raises(InputError, match="class names"):
        classification([0, 1], [[0.5, 0.5], [0.5, 0.5]], "binary", ["a"])


def test_multilabel_soft_u_random_targets_are_ignored_and_reported():
    """U-Random soft targets (0.55-0.85) have no hard truth: the metrics treat them as NaN
    (ignored) and say how many per label; the result equals passing NaN there."""
    rng = np.random.default_rng(7)
    n, names = 150, ["Atelectasis", "Cardiomegaly", "Edema"]
    y = rng.integers(0, 2, (n, 3)).astype(float)
    s = np.clip(0.4 * y + rng.random((n, 3)) * 0.6, 0, 1)
    soft = rng.random((n, 3)) < 0.2
    y_soft = np.where(soft, np.round(0.55 + 0.3 * rng.random((n, 3)), 2), y)
    y_soft[0, 0] = np.nan
    y_nan = np.where(soft, np.nan, y_soft)
    a = classification(y_soft, s, "multilabel", names, n_boot=100, seed=2)
    b = classification(y_nan, s, "multilabel", names, n_boot=100, seed=2)
    assert a["metrics"] == b["metrics"] and a["ci"] == b["ci"] and a["confusion_matrix"] == b["confusion_matrix"]
    for j, name in enumerate(names):
        assert a["per_class"][name]["n_soft_ignored"] == int(soft[:, j].sum()) > 0
        assert b["per_class"][name]["n_soft_ignored"] == 0
        v = ~np.isnan(y_nan[:, j])
        assert a["per_class"][name]["n_labelled"] == v.sum()
        assert a["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y_nan[v, j], s[v, j]), abs=1e-12)
    assert a["settings"]["soft_labels"] == f"{int(soft.sum())} soft target(s) strictly between 0 and 1 ignored " \
                                           "(no hard truth)"
    assert b["settings"]["soft_labels"] == "none"


def test_binary_with_one_class_present_skips_auc_and_names_it():
    rng = np.random.default_rng(4)
    y = np.zeros(40, dtype=int)  # every truth negative
    p1 = rng.random(40)
    r = classification(y, p1, "binary", ["normal", "pneumonia"], n_boot=50, seed=0)
    pred = (p1 > 0.5).astype(int)
    m = r["metrics"]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    assert np.isnan(m["auc"]) and np.isnan(m["ap"]) and np.isnan(m["sensitivity"])
    assert r["per_class"]["pneumonia"]["auc"] is None and r["per_class"]["pneumonia"]["sensitivity"] is None
    assert [s["label"] for s in r["skipped"]["auc"]] == ["normal", "pneumonia"]
    assert "only one class present (all negative, n=40)" in r["skipped"]["auc"][1]["reason"]
    assert r["skipped"]["ap"] == [{"label": "pneumonia", "reason": "no positive sample"}]
    assert r["ci"]["auc"]["n_valid"] == 0 and r["ci"]["auc"]["low"] is None
    assert r["ci"]["accuracy"]["low"] <= m["accuracy"] <= r["ci"]["accuracy"]["high"]
