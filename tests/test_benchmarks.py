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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.__main__ import modules, summary, table  # noqa: E402
from benchmarks._harness import row  # noqa: E402

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
