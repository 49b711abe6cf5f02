"""``make bench-quick`` is exercised here: the whole quick suite runs as a subprocess (every
``benchmarks/bench_*.py`` module, at tiny size) and every module must produce rows with finite,
positive times and agreement within the tolerance each row states. Plus the harness's row and
table logic on hand-made rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.__main__ import _add_flops, modules, summary, table  # noqa: E402
from benchmarks._harness import bare_rate, batch_like, count_flops, count_flops_fed, row  # noqa: E402

TIME_KEYS = ("medxai_s", "peer_s")


def test_row_targets_and_tolerance():
    r = row("w", "p", 1.0, 2.5, target=2.0, agreement=1e-7, tol=1e-5)
    assert r["ratio"] == 2.5 and r["met"] is True and r["agreement_ok"] is True
    r = row("w", "p", 2.0, 1.0, target=1.3, agreement=1e-3, tol=1e-5, miss_reason="why")
    assert r["met"] is False and r["reason"] == "why" and r["agreement_ok"] is False
    r = row("w", None, 1.0, None, target=1.15, target_on="ratio_to_ideal", higher_is_better=False,
            ratio_to_ideal=1.1)
    assert r["met"] is True and r["ratio"] is None
    assert row("w", "p", 1.0, None, target=2.0)["met"] is None  # nothing to compare: not measured
    assert "reason" not in row("w", "p", 1.0, 3.0, target=2.0, miss_reason="x")


def test_table_marks_misses_with_ratio_and_reason():
    info = {"cores": 2, "cpu": "cpu", "torch": "2", "python": "3", "matmul_gflops": 10.0, "load_1min": 1.0}
    rows = [row("fast thing", "peer", 1.0, 3.0, target=2.0),
            row("slow thing", "peer", 1.0, 1.1, target=2.0, miss_reason="the model is the whole cost")]
    md = table([{"kind": "k", "rows": rows, "seconds": 1.0}], info)
    assert "2 targets: 1 met, 1 missed" in md
    assert "met (3)" in md and "**missed** (1.1)" in md and "the model is the whole cost" in md
    _lines, missed = summary([{"kind": "k", "rows": rows}])
    assert [r["work"] for r in missed] == ["slow thing"]


def test_row_flop_keys_and_restatement_only_when_limit_below_target_and_missed():
    # F_m = 4 GFLOP in 2 s, F_p = 6 GFLOP in 3 s, bare rate 2.5 GFLOP/s: limit = 3 * 2.5 / 4 = 1.875x
    kw = dict(flops=4e9, peer_flops=6e9, bare_flops_per_s=2.5e9, miss_reason="why")
    r = row("w", "p", 2.0, 3.0, target=2.0, **kw)
    assert r["medxai_gflop_per_s"] == 2.0 and r["peer_gflop_per_s"] == 2.0 and r["bare_gflop_per_s"] == 2.5
    assert r["flop_ratio"] == 1.5 and r["ratio_limit"] == 1.875 and r["ratio"] == 1.5
    assert r["medxai_share_of_bare"] == pytest.approx(0.8) and r["peer_share_of_bare"] == pytest.approx(0.8)
    assert r["original_target"] == 2.0 and r["target"] == 0.8 and r["target_on"] == "medxai_share_of_bare"
    assert r["met"] is True and "reason" not in r
    assert r["restated"].startswith("ratio target 2x impossible") and "1.6 s" in r["restated"]
    assert "limit 1.88x" in r["restated"]
    slow = row("w", "p", 4.0, 3.0, target=2.0, **kw)  # 4 GFLOP in 4 s: 40 % of bare, efficiency missed too
    assert slow["restated"] and slow["met"] is False and slow["reason"] == "why"
    assert slow["medxai_share_of_bare"] == pytest.approx(0.4) and slow["ratio_limit"] == 1.875
    more = row("w", "p", 2.0, 3.0, target=2.0, **dict(kw, peer_flops=2e9))  # medxai does 2x the peer's FLOPs
    assert "restated" not in more and more["met"] is False and more["reason"] == "why"  # its own work: a real miss
    same = row("w", "p", 2.0, 3.0, target=2.0, **dict(kw, peer_flops=4e9 * 0.995))  # within FLOP_MATCH (1 %)
    assert same["restated"] and same["original_target"] == 2.0
    over = row("w", "p", 2.0, 3.0, target=2.0, **dict(kw, peer_flops=4e9 * 0.98))  # 2 % more: medxai's own work
    assert "restated" not in over and over["met"] is False
    assert "restated" not in row("w", "p", 2.0, 3.0, target=1.5, **kw)  # ratio 1.5 meets 1.5: kept
    kept = row("w", "p", 2.0, 3.0, target=1.8, **kw)  # missed, but the limit 1.875 >= 1.8: a real miss
    assert "restated" not in kept and kept["met"] is False and kept["target_on"] == "ratio"
    other = row("w", "p", 2.0, 3.0, target=1.9, target_on="speed", speed=1.0, **kw)  # not a ratio target
    assert "restated" not in other and other["met"] is False
    bare = row("w", "p", 2.0, 3.0, target=2.0, flops=4e9, peer_flops=None, bare_flops_per_s=None)
    assert bare["ratio_limit"] is None and bare["peer_gflop_per_s"] is None and "restated" not in bare
    assert "flops" not in row("w", "p", 2.0, 3.0)  # no FLOPs given: no FLOP keys


def test_count_flops_fed_counts_every_pass_and_the_largest_batch():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3, bias=False)
    x = torch.rand(5, 4)
    flops, fed = count_flops_fed(lin, lambda: (lin(x), lin(x[:2])))
    assert flops == 2 * 5 * 4 * 3 + 2 * 2 * 4 * 3 and fed == 5  # 2 FLOPs per multiply-add
    xi = x.clone().requires_grad_(True)  # autograd.grad to a leaf input: the module tracker's failure case
    assert count_flops(lambda: torch.autograd.grad(lin(xi).sum(), xi)) == 2 * 5 * 4 * 3 * 2
    assert torch.equal(batch_like(x, 7), x[[0, 1, 2, 3, 4, 0, 1]]) and batch_like(x, None) is x
    assert bare_rate(lin, x) > 0


def test_table_has_flop_section_and_restated_list():
    info = {"cores": 2, "cpu": "cpu", "torch": "2", "python": "3", "matmul_gflops": 10.0, "load_1min": 1.0}
    rows = [row("restated thing", "peer", 4.0, 3.0, target=2.0, flops=4e9, peer_flops=6e9, bare_flops_per_s=2.5e9),
            row("plain thing", "peer", 1.0, 3.0, target=2.0)]
    res = {"kind": "k", "rows": rows, "seconds": 1.0}
    _add_flops(res, 10e9)
    assert rows[0]["medxai_share_of_peak"] == pytest.approx(0.1) and rows[0]["peer_share_of_peak"] == pytest.approx(0.2)
    md = table([res], info)
    assert "2 targets: 1 met, 1 missed" in md
    assert ("- k: restated thing vs peer: original target >= 2x, measured ratio 0.75, limit 1.88x; efficiency "
            "medxai_share_of_bare >= 0.8: **missed** (0.4)") in md
    assert "## FLOP efficiency (compute-bound rows)" in md
    assert "| k | restated thing | peer | 1 (10 %) | 2 (20 %) | 2.5 | 40 % | 80 % | 1.5 | 1.88 |" in md
    assert "plain thing | peer | 1 (" not in md  # a row without FLOPs is not in the section
    assert "**target restated**: ratio target 2x impossible" in md


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_quick_runs_every_module(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for path in tmp_path.glob("*.json"):
        res = json.loads(path.read_text())
        results[res["module"]] = res
    assert set(results) == set(modules()), f"modules without results: {set(modules()) - set(results)}"
    for name, res in results.items():
        assert not res.get("error"), (name, res.get("error"))
        assert res["rows"], f"{name}: no rows"
        assert any(r.get(k) is not None for r in res["rows"] for k in TIME_KEYS), f"{name}: no timed row"
        for r in res["rows"]:
            where = f"{name}: {r.get('work')}"
            for k in TIME_KEYS:
                v = r.get(k)
                assert v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0), (where, k, v)
            a = r.get("agreement")
            assert a is None or math.isfinite(a), (where, a)
            assert r.get("agreement_ok") is not False, (where, a, r.get("tol"))
            if r.get("target") is not None:
                assert r.get("met") in (True, False, None), where
