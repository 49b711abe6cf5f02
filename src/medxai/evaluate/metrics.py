"""Classification metrics with seeded bootstrap confidence intervals.

Point estimates come from scikit-learn (accuracy_score, balanced_accuracy_score,
cohen_kappa_score(weights="quadratic"), roc_auc_score, average_precision_score,
precision_recall_fscore_support, confusion_matrix). Bootstrap replicates (percentile method,
rows resampled with replacement, ``numpy.random.default_rng(seed)``) are computed vectorised
from per-replicate confusion matrices and a weighted Mann-Whitney AUC; the tests check them
against scikit-learn on the same resamples.

Expected calibration error (Guo et al. 2017): 15 equal-width confidence bins on [0, 1] (right-
closed, 0 in the first bin), top-label confidence ``max_k p_k`` (binary: ``max(p, 1 - p)``),
``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``; multilabel pools every labelled
(sample, label) entry as a binary prediction at the threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medxai.errors import InputError

TASKS = ("binary", "multiclass", "ordinal", "multilabel")
ECE_BINS = 15
_CHUNK = 50  # bootstrap replicates drawn per chunk (fixed, so results do not depend on memory)

_SINGLE_METRICS = ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc_macro", "ap_macro", "f1_macro", "ece")
_BINARY_METRICS = ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc", "ap", "sensitivity", "specificity",
                   "precision", "f1", "ece")
_MULTILABEL_METRICS = ("auc_macro", "ap_macro", "f1_macro", "accuracy_macro", "sensitivity_macro",
                       "specificity_macro", "ece")
_CI_METRICS = {
    "binary": ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc", "sensitivity", "specificity", "f1"),
    "multiclass": ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc_macro", "f1_macro"),
    "ordinal": ("accuracy", "balanced_accuracy", "kappa_quadratic", "auc_macro", "f1_macro"),
    "multilabel": ("auc_macro",),
}
_LOWER_IS_BETTER = {"ece", "loss"}


def metric_names(task: str) -> tuple[str, ...]:
    """The keys of ``classification(...)["metrics"]`` for a task."""
    _check_task(task)
    if task == "binary":
        return _BINARY_METRICS
    if task == "multilabel":
        return _MULTILABEL_METRICS
    return _SINGLE_METRICS


def higher_is_better(name: str) -> bool:
    """False for losses and calibration error, True for the other metrics."""
    base = name.removeprefix("val_").removeprefix("train_")
    return base not in _LOWER_IS_BETTER


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def _as_inputs(y_true: Any, y_score: Any, task: str, class_names: Sequence[str] | None
               ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """Validated (y_true, y_score, class names, soft-entry mask or None).

    Multilabel: entries strictly between 0 and 1 (U-Random soft targets) become NaN (ignored,
    as the metrics need a hard truth); their mask is returned so the result can say so.
    """
    _check_task(task)
    yt = np.asarray(y_true.detach().cpu() if hasattr(y_true, "detach") else y_true)
    ys = np.asarray(y_score.detach().cpu().float() if hasattr(y_score, "detach") else y_score, dtype=np.float64)
    if task == "binary" and ys.ndim == 1:
        ys = np.stack([1 - ys, ys], axis=1)
    if ys.ndim != 2:
        raise InputError(f"y_score must have shape (N, K), got {ys.shape}")
    n, k = ys.shape
    if n == 0:
        raise InputError("no samples to evaluate")
    if not np.all(np.isfinite(ys)) or ys.min() < 0 or ys.max() > 1:
        raise InputError("y_score must hold finite probabilities in [0, 1] (softmax or sigmoid outputs)")
    if task == "binary" and k != 2:
        raise InputError(f"binary y_score must have 2 columns (or be (N,) scores of class 1), got {k}")
    if task == "multilabel":
        yt = yt.astype(np.float64)
        if yt.shape != ys.shape:
            raise InputError(f"multilabel y_true must have y_score's shape {ys.shape}, got {yt.shape}")
        labelled = ~np.isnan(yt)
        if bool(((yt[labelled] < 0) | (yt[labelled] > 1)).any()):
            raise InputError("multilabel y_true must hold 0, 1, NaN (ignored) or soft targets in (0, 1) "
                             "(ignored); apply an uncertainty policy to -1 (uncertain) labels first")
        soft = labelled & (yt > 0) & (yt < 1)
        if soft.any():
            yt = np.where(soft, np.nan, yt)
    else:
        if yt.ndim != 1 or yt.shape[0] != n:
            raise InputError(f"y_true must have shape ({n},), got {yt.shape}")
        if yt.dtype.kind == "f":
            if not np.all(np.isfinite(yt)) or not np.all(yt == np.round(yt)):
                raise InputError("single-label y_true must hold integer class indices")
        yt = yt.astype(np.int64)
        if yt.min() < 0 or yt.max() >= k:
            raise InputError(f"y_true has class indices outside [0, {k - 1}]")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise InputError(f"{len(names)} class names for {k} score columns")
    return yt, ys, names, (soft if task == "multilabel" else None)


# ----------------------------------------------------------------------------- calibration
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins on [0, 1] (right-closed; 0 goes to the first bin)."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.digitize(conf, edges[1:-1], right=True)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, corr, n_bins) - np.bincount(b, conf, n_bins))
    return float(gap.sum() / conf.size) if count.sum() else float("nan")


# ----------------------------------------------------------------------------- bootstrap engine
def bootstrap_index_chunks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The resampling indices, (c, n) int arrays in chunks of 50 replicates, from one seeded stream."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        c = min(_CHUNK, n_boot - done)
        yield rng.integers(0, n, size=(c, n))
        done += c


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    c = idx.shape[0]
    flat = (idx + n * np.arange(c)[:, None]).ravel()
    return np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count 1/2) for each row of sample ``weights`` (B, N).

    scores (N,), labels (N,) bool. Rows without positive or negative weight give NaN. With
    integer weights this equals ``roc_auc_score`` on the repeated samples.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    lab = labels[order]
    w = weights[:, order]
    neg = np.add.reduceat(w * (~lab), starts, axis=1)
    pos = np.add.reduceat(w * lab, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _cm_metrics(cm: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """Vectorised metrics from confusion matrices (B, K, K) (rows truth, columns prediction)."""
    k = cm.shape[1]
    n = cm.sum((1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    rows, cols = cm.sum(2), cm.sum(1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["accuracy"] = diag.sum(1) / n
        recall = np.where(rows > 0, diag / np.where(rows > 0, rows, 1), np.nan)
        out["balanced_accuracy"] = np.nanmean(recall, axis=1) if k else np.nan
        w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2.0
        obs = np.einsum("bij,ij->b", cm, w)
        exp = np.einsum("bi,ij,bj->b", rows, w, cols) / n
        out["kappa_quadratic"] = np.where(exp > 0, 1 - obs / np.where(exp > 0, exp, 1), np.nan)
        fp, fn = cols - diag, rows - diag
        denom = 2 * diag + fp + fn
        f1 = np.where(denom > 0, 2 * diag / np.where(denom > 0, denom, 1), np.nan)
        out["f1_macro"] = np.nanmean(f1, axis=1)
        if task == "binary":
            out["sensitivity"] = recall[:, 1]
            out["specificity"] = recall[:, 0]
            out["f1"] = np.where(denom[:, 1] > 0, f1[:, 1], 0.0)
    return out


def _bootstrap_single(yt: np.ndarray, ys: np.ndarray, task: str, auc_classes: list[int], n_boot: int,
                      seed: int) -> dict[str, np.ndarray]:
    n, k = ys.shape
    pred = ys.argmax(1)
    code = yt * k + pred
    want = _CI_METRICS[task]
    reps: dict[str, list[np.ndarray]] = {m: [] for m in want}
    for idx in bootstrap_index_chunks(n, n_boot, seed):
        c = idx.shape[0]
        cm = np.bincount((code[idx] + k * k * np.arange(c)[:, None]).ravel(), minlength=c * k * k)
        vals = _cm_metrics(cm.reshape(c, k, k).astype(np.float64), task)
        if "auc" in want or "auc_macro" in want:
            w = _counts(idx, n)
            if task == "binary":
                vals["auc"] = weighted_auc(ys[:, 1], yt == 1, w)
            else:
                per = [weighted_auc(ys[:, j], yt == j, w) for j in auc_classes]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    vals["auc_macro"] = np.nanmean(np.stack(per, 1), 1) if per else np.full(c, np.nan)
        for m in want:
            reps[m].append(vals[m])
    return {m: np.concatenate(v) for m, v in reps.items()}


def _bootstrap_multilabel(yt: np.ndarray, ys: np.ndarray, auc_labels: list[int], n_boot: int, seed: int
                          ) -> dict[str, np.ndarray]:
    n, _ = ys.shape
    per: dict[int, list[np.ndarray]] = {j: [] for j in auc_labels}
    for idx in bootstrap_index_chunks(n, n_boot, seed):
        w = _counts(idx, n)
        for j in auc_labels:
            valid = ~np.isnan(yt[:, j])
            per[j].append(weighted_auc(ys[valid, j], yt[valid, j] == 1, w[:, valid]))
    out = {f"auc/{j}": np.concatenate(v) for j, v in per.items()}
    if auc_labels:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["auc_macro"] = np.nanmean(np.stack([out[f"auc/{j}"] for j in auc_labels], 1), 1)
    else:
        out["auc_macro"] = np.full(n_boot, np.nan)
    return out


def _interval(values: np.ndarray, level: float, n_boot: int) -> dict[str, Any]:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return {"low": None, "high": None, "level": level, "n_valid": 0, "n_boot": n_boot}
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(lo), "high": float(hi), "level": level, "n_valid": int(ok.size), "n_boot": n_boot}


# ----------------------------------------------------------------------------- the public function
def classification(y_true: Any, y_score: Any, task: str, class_names: Sequence[str] | None = None, *,
                   n_boot: int = 1000, seed: int = 0, level: float = 0.95, threshold: float = 0.5,
                   n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Classification metrics of probabilities ``y_score`` against ``y_true``.

    y_true: (N,) class indices (binary/multiclass/ordinal) or (N, K) 0/1/NaN (multilabel; NaN
    entries ignored per label; soft targets strictly between 0 and 1, e.g. CheXpert's U-Random
    values, have no hard truth and are ignored too: ``per_class[label]["n_soft_ignored"]`` and
    ``settings["soft_labels"]`` say how many). y_score: (N, K) softmax (single-label) or sigmoid (multilabel)
    probabilities; binary also accepts (N,) scores of class 1. Predictions: argmax, or
    ``score >= threshold`` per label for multilabel.

    Returns a JSON-able dict: ``metrics`` (the headline numbers, see ``metric_names``),
    ``per_class`` (auc, ap, sensitivity = recall, specificity, precision, f1, support),
    ``confusion_matrix``, ``ci`` (percentile bootstrap, ``n_boot`` replicates, ``level``; 0 turns
    it off), ``skipped`` (labels whose AUC/AP is undefined, with the reason) and ``settings``.

    >>> r = classification([0, 1, 1, 0], [[.9, .1], [.2, .8], [.4, .6], [.45, .55]], "binary", n_boot=0)
    >>> r["metrics"]["accuracy"], r["metrics"]["auc"]
    (0.75, 1.0)
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    yt, ys, names, soft = _as_inputs(y_true, y_score, task, class_names)
    n, k = ys.shape
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    skipped: dict[str, list[dict[str, str]]] = {"auc": [], "ap": []}
    per_class: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    settings = {"ece_bins": n_bins, "ece": "top-label confidence, equal-width bins on [0, 1]",
                "bootstrap": f"percentile, {n_boot} replicates, seed {seed}, rows resampled" if n_boot else "off",
                "threshold": threshold if task == "multilabel" else None,
                "prediction": "score >= threshold per label" if task == "multilabel" else "argmax"}
    if task == "multilabel":
        n_soft = int(soft.sum()) if soft is not None else 0
        settings["soft_labels"] = (f"{n_soft} soft target(s) strictly between 0 and 1 ignored (no hard truth)"
                                   if n_soft else "none")

    if task != "multilabel":
        labels = list(range(k))
        pred = ys.argmax(1)
        cm = confusion_matrix(yt, pred, labels=labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics["accuracy"] = float(accuracy_score(yt, pred))
            metrics["balanced_accuracy"] = float(balanced_accuracy_score(yt, pred))
            kappa = cohen_kappa_score(yt, pred, labels=labels, weights="quadratic")
            metrics["kappa_quadratic"] = float(kappa)
            prec, rec, f1, sup = precision_recall_fscore_support(yt, pred, labels=labels, zero_division=0)
            present = sorted(set(yt.tolist()) | set(pred.tolist()))
            f1_macro = precision_recall_fscore_support(yt, pred, labels=present, average="macro",
                                                       zero_division=0)[2]
        tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
        fp = cm.sum(0) - np.diag(cm)
        auc_ok: list[int] = []
        for j, name in enumerate(names):
            pos = yt == j
            row: dict[str, Any] = {"sensitivity": float(rec[j]) if sup[j] else None,
                                   "specificity": float(tn[j] / (tn[j] + fp[j])) if tn[j] + fp[j] else None,
                                   "precision": float(prec[j]), "f1": float(f1[j]), "support": int(sup[j])}
            if 0 < pos.sum() < n:
                row["auc"] = float(roc_auc_score(pos, ys[:, j]))
                auc_ok.append(j)
            else:
                row["auc"] = None
                skipped["auc"].append({"label": name, "reason": _one_class_reason(pos)})
            if pos.any():
                row["ap"] = float(average_precision_score(pos, ys[:, j]))
            else:
                row["ap"] = None
                skipped["ap"].append({"label": name, "reason": "no positive sample"})
            per_class[name] = row
        aucs = [per_class[names[j]]["auc"] for j in auc_ok]
        aps = [r["ap"] for r in per_class.values() if r["ap"] is not None]
        if task == "binary":
            p1 = per_class[names[1]]
            metrics.update(auc=_nan_if_none(p1["auc"]), ap=_nan_if_none(p1["ap"]),
                           sensitivity=_nan_if_none(p1["sensitivity"]),
                           specificity=_nan_if_none(p1["specificity"]), precision=float(prec[1]), f1=float(f1[1]))
        else:
            metrics["auc_macro"] = float(np.mean(aucs)) if aucs else float("nan")
            metrics["ap_macro"] = float(np.mean(aps)) if aps else float("nan")
            metrics["f1_macro"] = float(f1_macro)
        metrics["ece"] = expected_calibration_error(ys.max(1), pred == yt, n_bins)
        confusion: Any = cm.tolist()
        reps = _bootstrap_single(yt, ys, task, auc_ok, n_boot, seed) if n_boot else {}
    else:
        confusion = {}
        auc_ok = []
        conf_all, corr_all = [], []
        for j, name in enumerate(names):
            valid = ~np.isnan(yt[:, j])
            t = yt[valid, j].astype(np.int64)
            s = ys[valid, j]
            p = (s >= threshold).astype(np.int64)
            row = {"support": int(t.sum()), "n_labelled": int(valid.sum()),
                   "n_soft_ignored": int(soft[:, j].sum()) if soft is not None else 0}
            if valid.any():
                c2 = confusion_matrix(t, p, labels=[0, 1])
                (tn_, fp_), (fn_, tp_) = c2
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pr, rc, f, _ = precision_recall_fscore_support(t, p, labels=[1], zero_division=0)
                row.update(accuracy=float(accuracy_score(t, p)),
                           sensitivity=float(rc[0]) if tp_ + fn_ else None,
                           specificity=float(tn_ / (tn_ + fp_)) if tn_ + fp_ else None,
                           precision=float(pr[0]), f1=float(f[0]))
                confusion[name] = c2.tolist()
                conf_all.append(np.maximum(s, 1 - s))
                corr_all.append(p == t)
            if valid.any() and 0 < t.sum() < t.size:
                row["auc"] = float(roc_auc_score(t, s))
                auc_ok.append(j)
            else:
                row["auc"] = None
                skipped["auc"].append({"label": name, "reason": _one_class_reason(t == 1)})
            if valid.any() and t.any():
                row["ap"] = float(average_precision_score(t, s))
            else:
                row["ap"] = None
                skipped["ap"].append({"label": name, "reason": "no positive sample" if valid.any()
                                      else "no labelled sample"})
            per_class[name] = row

        def mean_of(key: str) -> float:
            vals = [r[key] for r in per_class.values() if r.get(key) is not None]
            return float(np.mean(vals)) if vals else float("nan")

        metrics.update(auc_macro=mean_of("auc"), ap_macro=mean_of("ap"), f1_macro=mean_of("f1"),
                       accuracy_macro=mean_of("accuracy"), sensitivity_macro=mean_of("sensitivity"),
                       specificity_macro=mean_of("specificity"))
        metrics["ece"] = (expected_calibration_error(np.concatenate(conf_all), np.concatenate(corr_all), n_bins)
                          if conf_all else float("nan"))
        reps = _bootstrap_multilabel(yt, ys, auc_ok, n_boot, seed) if n_boot else {}

    ci: dict[str, Any] = {}
    for key, vals in reps.items():
        if key.startswith("auc/"):
            per_class[names[int(key.split("/", 1)[1])]]["auc_ci"] = _interval(vals, level, n_boot)
        else:
            ci[key] = _interval(vals, level, n_boot)
    return {"task": task, "n": int(n), "class_names": names, "metrics": metrics, "per_class": per_class,
            "confusion_matrix": confusion, "ci": ci, "skipped": {k2: v for k2, v in skipped.items() if v},
            "settings": settings}


def _nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _one_class_reason(pos: np.ndarray) -> str:
    if pos.size == 0:
        return "no labelled sample"
    return f"only one class present (all {'positive' if pos.all() else 'negative'}, n={pos.size})"
