"""summarize / compare: numbers vs numpy and scipy, seeded bootstrap, NaN counting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from medxai.metrics import bootstrap_ci, compare, summarize


def test_summarize_long_table():
    rng = np.random.default_rng(0)
    rows = []
    for model in ("standard", "robust"):
        for method in ("saliency", "gradcam"):
            for i in range(40):
                v = rng.normal(0.5 if model == "robust" else 0.3, 0.1)
                rows.append({"model": model, "method": method, "metric": "energy", "id": f"img{i}",
                             "value": float("nan") if i % 10 == 0 else v})
    df = pd.DataFrame(rows)
    out = summarize(df, by=("model", "method", "metric"), n_boot=2000, seed=1)
    assert [(r["model"], r["method"]) for r in out] == [("standard", "saliency"), ("standard", "gradcam"),
                                                          ("robust", "saliency"), ("robust", "gradcam")]
    for r in out:
        v = df[(df.model == r["model"]) & (df.method == r["method"])].value.to_numpy()
        f = v[np.isfinite(v)]
        assert r["n"] == 36 and r["n_nan"] == 4
        assert r["mean"] == pytest.approx(f.mean()) and r["median"] == pytest.approx(np.median(f))
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        ref = stats.bootstrap((f,), np.mean, n_resamples=5000, method="percentile", random_state=0).confidence_interval
        assert abs(r["ci_low"] - ref.low) < 0.01 and abs(r["ci_high"] - ref.high) < 0.01
    again = summarize(df, by=("model", "method", "metric"), n_boot=2000, seed=1)
    assert again == out
    # a group's interval does not depend on which other groups are summarised
    only = summarize(df[df.model == "robust"], by=("model", "method", "metric"), n_boot=2000, seed=1)
    assert only[0] == out[2]


def test_summarize_mapping_and_constant():
    out = summarize({"a": torch.tensor([1.0, 1.0, 1.0]), "b": [0.0, float("nan"), 2.0]}, n_boot=200)
    assert out[0]["group"] == "a" and out[0]["ci_low"] == out[0]["ci_high"] == 1.0
    assert out[1]["n"] == 2 and out[1]["n_nan"] == 1 and out[1]["mean"] == 1.0
    assert np.isnan(bootstrap_ci([float("nan")])[0])


def test_compare_paired():
    rng = np.random.default_rng(2)
    b = rng.normal(0.3, 0.1, 50)
    a = b + rng.normal(0.05, 0.05, 50)
    a[3] = np.nan
    b[7] = np.nan
    out = compare(a, b, n_boot=2000, seed=0)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    assert out["n"] == 48 and out["n_dropped"] == 2
    assert out["mean_diff"] == pytest.approx(d.mean()) and out["median_diff"] == pytest.approx(np.median(d))
    ref = stats.wilcoxon(d)
    assert out["p_value"] == pytest.approx(ref.pvalue) and out["statistic"] == pytest.approx(ref.statistic)
    r = stats.rankdata(np.abs(d))
    assert out["effect_size"] == pytest.approx((r[d > 0].sum() - r[d < 0].sum()) / r.sum())
    assert out["ci_low"] < d.mean() < out["ci_high"] and out["ci_low"] > 0
    # all a > b: rank-biserial 1; swapped: -1
    assert compare([2.0, 3, 4, 5, 6], [1.0, 1, 1, 1, 1])["effect_size"] == 1.0
    assert compare([1.0, 1, 1, 1, 1], [2.0, 3, 4, 5, 6])["effect_size"] == -1.0
    same = compare([0.5, 0.2, 0.1], [0.5, 0.2, 0.1])
    assert same["p_value"] == 1.0 and same["effect_size"] == 0.0 and same["mean_diff"] == 0.0
    by_id = compare({"x": 1.0, "y": 2.0, "z": 5.0}, {"z": 1.0, "y": 1.0, "w": 0.0})
    assert by_id["n"] == 2 and by_id["mean_diff"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="same length"):
        compare([1.0, 2.0], [1.0])


def test_every_nan_column_names_its_reason():
    """NaN scores carry a reason: empty masks for localisation, 0/0 for energy, and so on."""
    import torch

    from medxai.metrics import METRICS, energy_pointing_game, nan_reason, pointing_game

    maps = torch.rand(2, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = True
    assert torch.isnan(pointing_game(maps, masks)[1]) and not torch.isnan(pointing_game(maps, masks)[0])
    assert "empty mask" in nan_reason("pointing_game")
    assert torch.isnan(energy_pointing_game(-maps, masks)[0])  # no positive attribution: 0/0
    assert "no positive attribution" in nan_reason("energy_pointing_game")
    assert "empty mask" in nan_reason("topk_iou@10") and "marker" in nan_reason("shortcut_max")
    assert nan_reason("deletion") is None and nan_reason("not-a-metric") is None
    localisation = [n for n in METRICS.names() if METRICS.get(n).category == "localisation"]
    assert localisation and all(nan_reason(n) for n in localisation)
