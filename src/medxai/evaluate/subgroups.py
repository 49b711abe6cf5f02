"""Subgroup analysis: a task's headline metric per metadata group, the worst-group gap, its CI and p-value.

For each group variable (site, scanner, sex, age band, ...) and each of its values the metric comes
from :func:`medxai.evaluate.metrics.classification` on that subgroup (the main evaluation's
definitions) with its bootstrap CI. Subgroups with fewer than ``min_n`` images, or whose metric is
undefined (e.g. AUC with one class only), are listed under ``not_measured`` with the reason.

Per variable, over its measured groups: the worst and best group and the gap ``max - min`` of their
values, with

- a percentile bootstrap CI of the difference between the (observed) best and worst group: each
  replicate resamples the images of each of the two within its group (stratified; a group's
  replicates are those of its own CI, seeded with ``derive_seed("subgroup", seed, variable,
  value)``) and takes their difference in the observed direction, so it can cross 0 when the
  groups do not differ (max - min of every replicate could not: it is never negative);
- a permutation p-value: group labels are shuffled across the images of the measured groups
  (sizes kept, ``numpy.random.default_rng(derive_seed("subgroup-perm", seed, variable))``), the gap
  recomputed; ``p = (1 + #{gap_perm >= gap}) / (1 + n_valid)``.

Replicates are vectorised (weighted confusion matrices and the weighted Mann-Whitney AUC of
:mod:`medxai.evaluate.metrics`) for accuracy, balanced_accuracy, kappa_quadratic, f1_macro, auc,
auc_macro, sensitivity, specificity and f1; other metrics fall back to one ``classification`` call
per replicate (slow: lower ``n_boot`` / ``n_permutations``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medxai._util.seed import derive_seed
from medxai.errors import InputError
from medxai.evaluate.metrics import (
    _as_inputs,
    _cm_metrics,
    _counts,
    _interval,
    bootstrap_index_chunks,
    classification,
    higher_is_better,
    metric_names,
    weighted_auc,
)

__all__ = ["HEADLINE_METRIC", "plot_subgroups", "subgroup_metrics"]

#: The default metric per task.
HEADLINE_METRIC = {"binary": "auc", "multiclass": "balanced_accuracy", "ordinal": "kappa_quadratic",
                   "multilabel": "auc_macro"}
_CM = ("accuracy", "balanced_accuracy", "kappa_quadratic", "f1_macro", "sensitivity", "specificity", "f1")
_CHUNK = 50


# ----------------------------------------------------------------------------- replicate engine
def _weighted_metric(yt: np.ndarray, ys: np.ndarray, task: str, metric: str, names: list[str],
                     w: np.ndarray) -> np.ndarray:
    """``metric`` for each row of sample weights ``w`` (B, N) (integer counts or 0/1 membership) -> (B,)."""
    n, k = ys.shape
    if task == "multilabel" and metric == "auc_macro":
        per = [weighted_auc(ys[~np.isnan(yt[:, j]), j], yt[~np.isnan(yt[:, j]), j] == 1, w[:, ~np.isnan(yt[:, j])])
               for j in range(k)]
        return _nanmean(np.stack(per, 1))
    if task == "binary" and metric == "auc":
        return weighted_auc(ys[:, 1], yt == 1, w)
    if task != "multilabel" and metric == "auc_macro":
        return _nanmean(np.stack([weighted_auc(ys[:, j], yt == j, w) for j in range(k)], 1))
    if task != "multilabel" and metric in _CM:
        onehot = np.zeros((n, k * k))
        onehot[np.arange(n), yt * k + ys.argmax(1)] = 1.0
        cm = (w @ onehot).reshape(-1, k, k)
        return _cm_metrics(cm, task)[metric]
    out = []  # fallback: one classification call per replicate
    for row in w:
        idx = np.repeat(np.arange(n), np.rint(row).astype(np.int64))
        out.append(classification(yt[idx], ys[idx], task, names, n_boot=0)["metrics"][metric] if idx.size
                   else math.nan)
    return np.asarray(out, dtype=np.float64)


def _nanmean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def _boot_replicates(yt: np.ndarray, ys: np.ndarray, task: str, metric: str, names: list[str], n_boot: int,
                     seed: int) -> np.ndarray:
    """(n_boot,) replicate values of one group, rows resampled with ``bootstrap_index_chunks(n, n_boot, seed)``."""
    n = len(ys)
    parts = [_weighted_metric(yt, ys, task, metric, names, _counts(idx, n))
             for idx in bootstrap_index_chunks(n, n_boot, seed)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _perm_gaps(yt: np.ndarray, ys: np.ndarray, task: str, metric: str, names: list[str], sizes: list[int],
               n_perm: int, seed: int) -> np.ndarray:
    """(n_perm,) gaps max - min with the group labels (of sizes ``sizes``) shuffled over the pooled images."""
    n = len(ys)
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0, *sizes])
    out = []
    for start in range(0, n_perm, _CHUNK):
        c = min(_CHUNK, n_perm - start)
        perms = np.stack([rng.permutation(n) for _ in range(c)])  # (c, n): position -> image
        vals = []
        for g in range(len(sizes)):
            w = np.zeros((c, n))
            np.put_along_axis(w, perms[:, bounds[g]:bounds[g + 1]], 1.0, axis=1)
            vals.append(_weighted_metric(yt, ys, task, metric, names, w))
        v = np.stack(vals, 1)
        out.append(v.max(1) - v.min(1))  # NaN if any group's value is undefined
    return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- public functions
def _check_groups(groups: Mapping[str, Sequence[Any]], n: int) -> dict[str, np.ndarray]:
    if not isinstance(groups, Mapping):
        raise InputError(f"groups must be a mapping {{variable: one value per sample}}, got {type(groups).__name__}")
    out = {}
    for name, vals in groups.items():
        arr = np.asarray(["missing" if v is None else str(v) for v in vals], dtype=object)
        if arr.shape != (n,):
            raise InputError(f"groups[{name!r}] has {arr.size} values for {n} samples")
        out[str(name)] = arr
    return out


def _group_entry(yt: np.ndarray, ys: np.ndarray, task: str, metric: str, names: list[str], idx: np.ndarray,
                 min_n: int, n_boot: int, seed: int, level: float) -> dict[str, Any]:
    n = int(idx.size)
    if n < min_n:
        return {"n": n, "measured": False, "reason": f"n={n} < min_n={min_n}"}
    r = classification(yt[idx], ys[idx], task, names, n_boot=n_boot, seed=seed, level=level)
    value = r["metrics"][metric]
    if value is None or not math.isfinite(value):
        why = [f"{s['label']}: {s['reason']}" for s in r["skipped"].get("ap" if metric.startswith("ap") else "auc",
                                                                     [])]
        return {"n": n, "measured": False, "reason": f"{metric} undefined" + (f" ({'; '.join(why)})" if why else "")}
    ci = r["ci"].get(metric)
    return {"n": n, "measured": True, "value": float(value),
            "ci": None if ci is None else {"low": ci["low"], "high": ci["high"], "level": level}}


def _gap(entries: dict[str, dict[str, Any]], better_high: bool) -> dict[str, Any]:
    measured = {v: e for v, e in entries.items() if e["measured"]}
    if len(measured) < 2:
        return {"worst": None, "best": None, "gap": None, "gap_ci": None, "p_value": None, "n_permutations": 0,
                "reason": f"{len(measured)} measured group(s); a gap needs 2"}
    order = sorted(measured, key=lambda v: measured[v]["value"])
    lo, hi = order[0], order[-1]
    worst, best = (lo, hi) if better_high else (hi, lo)
    return {"worst": worst, "best": best, "gap": float(measured[hi]["value"] - measured[lo]["value"]),
            "gap_ci": None, "p_value": None, "n_permutations": 0, "reason": None}


def subgroup_metrics(y_true: Any, y_score: Any, groups: Mapping[str, Sequence[Any]], task: str,
                     class_names: Sequence[str] | None, *, metric: str | None = None, n_boot: int = 1000,
                     seed: int = 0, min_n: int = 10, n_permutations: int = 1000, level: float = 0.95
                     ) -> dict[str, Any]:
    """Per-group metrics and the worst-group gap of each group variable.

    y_true (N,) / y_score (N, K) as for :func:`~medxai.evaluate.metrics.classification`; ``groups``
    {variable: N values} (str; None -> "missing"); ``metric`` one of ``metric_names(task)``
    (default :data:`HEADLINE_METRIC`). Returns a JSON-able dict: ``overall`` {n, value, ci};
    ``variables`` {variable: {``groups`` {value: {n, measured, value, ci}} (measured),
    ``not_measured`` {value: {n, reason}}, worst, best, gap (max - min), gap_ci {low, high, level,
    n_valid, n_boot}, p_value, n_permutations, reason (why no gap, else None)}}; ``settings``.
    """
    yt, ys, names, _ = _as_inputs(y_true, y_score, task, class_names)
    metric = metric or HEADLINE_METRIC[task]
    if metric not in metric_names(task):
        raise InputError(f"metric {metric!r} is not a {task} metric; use one of {', '.join(metric_names(task))}")
    for key, v, lo in (("min_n", min_n, 1), ("n_boot", n_boot, 0), ("n_permutations", n_permutations, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise InputError(f"{key} must be an integer >= {lo}, got {v!r}")
    grp = _check_groups(groups, len(ys))
    better_high = higher_is_better(metric)
    every = np.arange(len(ys))
    overall = _group_entry(yt, ys, task, metric, names, every, 1, n_boot, seed, level)
    out: dict[str, Any] = {"task": task, "metric": metric, "higher_is_better": better_high, "n": len(ys),
                           "overall": overall, "variables": {}}
    for var, vals in grp.items():
        entries: dict[str, dict[str, Any]] = {}
        seeds: dict[str, int] = {}
        for value in sorted(set(vals.tolist())):
            seeds[value] = derive_seed("subgroup", seed, var, value) % 2**32
            entries[value] = _group_entry(yt, ys, task, metric, names, np.flatnonzero(vals == value), min_n,
                                          n_boot, seeds[value], level)
        res = _gap(entries, better_high)
        measured = [v for v, e in entries.items() if e["measured"]]
        if res["gap"] is not None and n_boot:
            hi, lo = (res["best"], res["worst"]) if better_high else (res["worst"], res["best"])
            reps = {v: _boot_replicates(yt[vals == v], ys[vals == v], task, metric, names, n_boot, seeds[v])
                    for v in (hi, lo)}
            res["gap_ci"] = _interval(reps[hi] - reps[lo], level, n_boot)
        if res["gap"] is not None and n_permutations:
            pool = np.concatenate([np.flatnonzero(vals == v) for v in measured])
            gaps = _perm_gaps(yt[pool], ys[pool], task, metric, names, [int((vals == v).sum()) for v in measured],
                              n_permutations, derive_seed("subgroup-perm", seed, var) % 2**32)
            ok = gaps[np.isfinite(gaps)]
            res["p_value"] = float((1 + np.sum(ok >= res["gap"] - 1e-12)) / (1 + ok.size))
            res["n_permutations"] = int(ok.size)
        out["variables"][var] = {
            "groups": {v: {k: e[k] for k in ("n", "value", "ci")} for v, e in entries.items() if e["measured"]},
            "not_measured": {v: {"n": e["n"], "reason": e["reason"]} for v, e in entries.items() if not e["measured"]},
            **res}
    boot = f"percentile, {n_boot} replicates, resampled within each group" if n_boot else "off"
    perm = f"{n_permutations} shuffles of the group labels over the measured groups" if n_permutations else "off"
    out["settings"] = {"min_n": min_n, "level": level, "seed": seed, "bootstrap": boot, "permutation": perm,
                       "gap": "max - min of the measured groups' values"}
    return out


def plot_subgroups(result: Mapping[str, Any], path: str | Path) -> Path:
    """PNG of :func:`subgroup_metrics`' result: one bar panel per variable, value with its CI as error
    bars, n in the tick labels (not measured groups as empty ticks marked "n/m"), the gap in the title;
    matplotlib Agg, no mathtext. Returns ``path``."""
    from medxai._util.plot import plain_text

    return plain_text(_plot)(result, Path(path))


def _plot(result: Mapping[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    from medxai._util.io import atomic_write

    variables = result.get("variables", {})
    k = max(1, len(variables))
    fig = Figure(figsize=(3.6 * k, 3.2), dpi=100, layout="constrained")
    axes = np.asarray(fig.subplots(1, k, squeeze=False))[0]
    metric = str(result.get("metric", "metric"))
    for ax, (var, r) in zip(axes, variables.items(), strict=False):
        measured, missing = r.get("groups", {}), r.get("not_measured", {})
        labels = [*measured, *missing]
        vals = [measured[v]["value"] for v in measured] + [0.0] * len(missing)
        err = np.zeros((2, len(labels)))
        for i, v in enumerate(measured):
            ci = measured[v].get("ci")
            if ci and ci.get("low") is not None and ci.get("high") is not None:
                err[:, i] = [max(0.0, vals[i] - ci["low"]), max(0.0, ci["high"] - vals[i])]
        colours = ["C3" if v == r.get("worst") else "C0" for v in measured] + ["0.8"] * len(missing)
        x = np.arange(len(labels))
        ax.bar(x, vals, yerr=err, color=colours, capsize=3)
        ticks = [f"{v}\nn={measured[v]['n']}" for v in measured] + [f"{v}\nn={missing[v]['n']} (n/m)" for v in missing]
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_ylabel(metric)
        overall = (result.get("overall") or {}).get("value")
        if overall is not None:
            ax.axhline(overall, color="0.4", linestyle=":", linewidth=1)
        gap, ci = r.get("gap"), r.get("gap_ci") or {}
        title = f"{var}: gap {gap:.3f}" if gap is not None else f"{var}: no gap"
        if gap is not None and ci.get("low") is not None:
            title += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
        if r.get("p_value") is not None:
            title += f", p={r['p_value']:.3g}"
        ax.set_title(title, fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path
