"""Statistics over per-image scores: summaries with bootstrap CIs and paired comparisons.

NaN policy: NaN scores (empty masks, undefined ratios) are dropped and counted (``n_nan``;
in a paired comparison a pair is dropped when either side is NaN, counted in ``n_dropped``).
Bootstrap draws come from ``numpy.random.default_rng`` seeded by ``derive_seed(seed, group)``,
so a group's interval does not depend on which other groups are summarised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medxai._util.seed import derive_seed
from medxai.errors import InputError

__all__ = ["bootstrap_ci", "compare", "summarize"]


def _values(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    return arr


def bootstrap_ci(values: Any, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                 stat: str = "mean") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (or median) of the finite ``values``; (NaN, NaN) if none."""
    v = _values(values)
    v = v[np.isfinite(v)]
    if v.size == 0 or n_boot < 1:
        return float("nan"), float("nan")
    if not 0 < ci < 1:
        raise InputError(f"ci must lie in (0, 1), got {ci}")
    rng = np.random.default_rng(seed)
    fn = np.mean if stat == "mean" else np.median
    out = np.empty(n_boot)
    step = max(1, 2**22 // v.size)  # bound the (draws x n) index matrix
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        out[s : s + k] = fn(v[rng.integers(0, v.size, size=(k, v.size))], axis=1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _stats(v: np.ndarray, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    finite = np.isfinite(v)
    f = v[finite]
    lo, hi = bootstrap_ci(f, n_boot=n_boot, seed=seed, ci=ci)
    return {"n": int(f.size), "n_nan": int((~finite).sum()),
            "mean": float(f.mean()) if f.size else float("nan"),
            "median": float(np.median(f)) if f.size else float("nan"),
            "std": float(f.std(ddof=1)) if f.size > 1 else float("nan"),
            "ci_low": lo, "ci_high": hi, "ci": ci}


def summarize(scores: Any, by: Sequence[str] = ("model", "method"), *, value: str = "value",
              n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> list[dict[str, Any]]:
    """One summary row per group: n, n_nan, mean, median, std and a bootstrap CI of the mean.

    scores: a long table (pandas DataFrame or a list of dicts) with the ``by`` columns and a
    ``value`` column (e.g. the rows of scores.csv, ``by=("model", "method", "metric")``), or a
    mapping {group name: values}, summarised per key (the row's ``group`` field).
    Returns JSON-ready dicts in first-appearance order of the groups.
    """
    if isinstance(scores, Mapping):
        return [{"group": str(k), **_stats(_values(v), n_boot, derive_seed(seed, k), ci)} for k, v in scores.items()]
    import pandas as pd

    df = scores if isinstance(scores, pd.DataFrame) else pd.DataFrame(list(scores))
    by = list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise InputError(f"scores lack the column(s) {missing}; have {list(df.columns)}")
    out = []
    for key, grp in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, [k.item() if hasattr(k, "item") else k for k in key], strict=True))
        row.update(_stats(grp[value].to_numpy(dtype=np.float64), n_boot, derive_seed(seed, *key), ci))
        out.append(row)
    return out


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) & set(b), key=str)
        return _values([a[k] for k in keys]), _values([b[k] for k in keys])
    va, vb = _values(a), _values(b)
    if va.shape != vb.shape:
        raise InputError(f"paired scores must have the same length, got {va.size} and {vb.size}")
    return va, vb


def compare(scores_a: Any, scores_b: Any, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
            alternative: str = "two-sided") -> dict[str, Any]:
    """Paired comparison of two models or methods on the same images (a - b).

    scores_a, scores_b: equal-length sequences/arrays/tensors paired by position, or mappings
    {image id: score} paired by id. Pairs with a NaN on either side are dropped (``n_dropped``).
    Returns n, n_dropped, mean_a, mean_b, mean_diff with a bootstrap CI (ci_low, ci_high),
    median_diff, the Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero_method "wilcox":
    zero differences are dropped; ``statistic``, ``p_value``) and the matched-pairs rank-biserial
    correlation ``effect_size`` = (R+ - R-) / (R+ + R-) over the ranks of |a - b| (Kerby 2014),
    in [-1, 1], positive when a > b. If every difference is zero: p_value 1, effect_size 0.
    """
    from scipy.stats import rankdata, wilcoxon

    va, vb = _pair(scores_a, scores_b)
    ok = np.isfinite(va) & np.isfinite(vb)
    a, b = va[ok], vb[ok]
    d = a - b
    out: dict[str, Any] = {"n": int(d.size), "n_dropped": int((~ok).sum()),
                           "mean_a": float(a.mean()) if d.size else float("nan"),
                           "mean_b": float(b.mean()) if d.size else float("nan"),
                           "mean_diff": float(d.mean()) if d.size else float("nan"),
                           "median_diff": float(np.median(d)) if d.size else float("nan"), "ci": ci,
                           "test": "wilcoxon", "effect_size_name": "rank_biserial"}
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, n_boot=n_boot, seed=derive_seed(seed, "compare"), ci=ci)
    nz = d[d != 0]
    if d.size == 0:
        out.update(statistic=float("nan"), p_value=float("nan"), effect_size=float("nan"))
    elif nz.size == 0:
        out.update(statistic=0.0, p_value=1.0, effect_size=0.0)
    else:
        res = wilcoxon(nz, zero_method="wilcox", alternative=alternative)
        r = rankdata(np.abs(nz))
        rplus, rminus = float(r[nz > 0].sum()), float(r[nz < 0].sum())
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue),
                   effect_size=(rplus - rminus) / (rplus + rminus))
    return out
