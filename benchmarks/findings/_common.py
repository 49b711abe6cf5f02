"""What every study of ``python -m benchmarks.findings`` shares: the verdict rule, claim records,
the audit call, per-image scores read back from the run directory, results JSON and docs/findings.md.

The verdict rule (one for every paired claim): the claimed effect has a direction ("higher": the
claimed difference a - b is positive; "lower": negative). With the 95% CI [lo, hi] of the effect:

- **shown**: the CI excludes zero in the claimed direction (lo > 0 for "higher", hi < 0 for "lower")
  and the claim's test agrees (p < 0.05);
- **refuted**: the CI excludes zero in the opposite direction and, for a two-sided test, p < 0.05
  (a one-sided test in the claimed direction cannot speak for the opposite one: the CI alone decides);
- **not shown**: anything else with numbers: the CI contains zero, or CI and test disagree (a
  percentile bootstrap CI on a few images can exclude zero while the test does not);
- **undetermined**: no finite CI, no test p-value or no pairs (the number could not be computed).

A "shown" therefore always carries ci_low, ci_high, p_value and n in the results JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "benchmarks" / "results" / "findings"
DOC = ROOT / "docs" / "findings.md"
VERDICTS = ("shown", "not shown", "refuted", "undetermined")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


ALPHA = 0.05


def verdict(ci_low: Any, ci_high: Any, direction: str, p_value: Any = None, n: Any = None, *,
            sided: str = "two-sided") -> str:
    """shown / not shown / refuted / undetermined for a claimed effect (see the module docstring).

    ``sided``: "two-sided", or "one-sided" when ``p_value`` tests the claimed direction only."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if sided not in ("two-sided", "one-sided"):
        raise ValueError(f"sided must be 'two-sided' or 'one-sided', got {sided!r}")
    if not (_finite(ci_low) and _finite(ci_high) and _finite(p_value) and _finite(n) and int(n) > 0):
        return "undetermined"
    lo, hi = float(ci_low), float(ci_high)
    if lo > hi:
        raise ValueError(f"ci_low {lo} exceeds ci_high {hi}")
    claimed = lo > 0 if direction == "higher" else hi < 0
    opposite = hi < 0 if direction == "higher" else lo > 0
    significant = float(p_value) < ALPHA
    if claimed and significant:
        return "shown"
    if opposite and (significant or sided == "one-sided"):
        return "refuted"
    return "not shown"


def claim(cid: str, words: str, tested: str, direction: str, comparison: Mapping[str, Any] | None,
          source: str, *, effect_name: str = "a - b", test: str | None = None, involved: tuple[str, ...] = (),
          chance: set[str] | frozenset[str] = frozenset(), **extra: Any) -> dict[str, Any]:
    """One claim: the study's words, what was measured, the effect with its 95% CI, test and verdict.

    ``comparison`` holds mean_diff (or effect), ci_low, ci_high, p_value, n (``medxai.metrics.compare``
    layout); None (not measured) gives verdict undetermined with ``reason``. A claim about a model of
    ``involved`` that is in ``chance`` (at chance by the audit's scorecard, :func:`at_chance`) keeps its
    numbers but is undetermined: the maps of a model that learned nothing say nothing about the claim."""
    c = dict(comparison or {})
    eff = c.get("mean_diff", c.get("effect"))
    row = {"id": cid, "claim": words, "tested": tested, "direction": direction, "effect_name": effect_name,
           "effect": _num(eff), "ci_low": _num(c.get("ci_low")), "ci_high": _num(c.get("ci_high")),
           "p_value": _num(c.get("p_value")), "n": int(c["n"]) if _finite(c.get("n")) else None,
           "test": test or c.get("test_name") or ("Wilcoxon signed-rank (paired), 95% percentile bootstrap CI of the "
                                                  "mean difference" if c.get("test") == "wilcoxon" else c.get("test")),
           "source": source}
    row["sided"] = c.get("sided", "two-sided")
    row["verdict"] = verdict(row["ci_low"], row["ci_high"], direction, row["p_value"], row["n"], sided=row["sided"])
    if comparison is None:
        row["reason"] = extra.pop("reason", "not measured")
    idle = [m for m in involved if m in chance]
    if idle:
        row["verdict"] = "undetermined"
        row["reason"] = f"{', '.join(idle)} at chance (the audit's scorecard): not judged"
    row.update(extra)
    return row


def at_chance(report: Mapping[str, Any]) -> set[str]:
    """The models the audit's scorecard calls at chance (``report["scorecard"]["models"][m]["at_chance"]``)."""
    return {m for m, sc in report.get("scorecard", {}).get("models", {}).items() if sc.get("at_chance")}


def _num(v: Any) -> float | None:
    return float(v) if _finite(v) else None


# -- the audit -------------------------------------------------------------------------------

def load_example(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((EXAMPLES / name).read_text())


def audit(raw: dict[str, Any], out: Path) -> tuple[Any, float]:
    """``run_audit(load_config(raw), out, synthetic=True)``: (AuditResult, seconds)."""
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    t0 = time.perf_counter()
    res = run_audit(load_config(raw), out, synthetic=True)
    return res, time.perf_counter() - t0


def stage(res: Any, name: str) -> dict[str, Any] | None:
    """The result.json of stage ``name`` (e.g. ``score/standard/gradcam``) of an audit, or None."""
    key = next((e["key"] for e in reversed(res.stages) if e["stage"] == name), None)
    if key is None:
        return None
    return json.loads((Path(res.out) / "stages" / name / key / "result.json").read_text())


def stage_dir(res: Any, name: str) -> Path | None:
    key = next((e["key"] for e in reversed(res.stages) if e["stage"] == name), None)
    return None if key is None else Path(res.out) / "stages" / name / key


def per_image(res: Any, model: str, method: str, metric: str) -> dict[str, float]:
    """{image id: value} of one (model, method, metric column) from the score stage (NaN when undefined)."""
    st = stage(res, f"score/{model}/{method}")
    if st is None or metric not in st.get("metrics", {}):
        return {}
    return {i: (float("nan") if v is None else float(v)) for i, v in zip(st["ids"], st["metrics"][metric]["values"],
                                                                         strict=True)}


def paired(va: Mapping[str, float], vb: Mapping[str, float], n_boot: int, seed: int = 0) -> dict[str, Any] | None:
    """``medxai.metrics.compare`` of a - b over the ids both have (pairs with a NaN dropped); None if none."""
    from medxai.metrics import compare

    ids = [i for i in va if i in vb]
    if not ids:
        return None
    return compare(np.array([va[i] for i in ids], float), np.array([vb[i] for i in ids], float), n_boot=n_boot,
                   seed=seed)


def comparison(report: dict, a: str, b: str, method: str, metric: str) -> dict | None:
    """The audit's own paired comparison (``report["scores"]["comparisons"]``) of models a - b."""
    return next((c for c in report["scores"]["comparisons"]
                 if (c["a"], c["b"], c["method"], c["metric"]) == (a, b, method, metric)), None)


def summary(report: dict, model: str, method: str, metric: str) -> dict | None:
    return next((s for s in report["scores"]["summary"]
                 if (s["model"], s["method"], s["metric"]) == (model, method, metric)), None)


def two_proportions(k_a: float, n_a: int, k_b: float, n_b: int) -> dict[str, Any] | None:
    """Difference of two rates p_a - p_b (k successes of n): Newcombe's hybrid score 95% CI (method 10,
    Newcombe 1998, from Wilson intervals) and the two-sided pooled z-test p-value. Unpaired: used where
    the report holds rates but not per-image outcomes (then the paired truth is at least this certain
    when outcomes correlate positively)."""
    from scipy.stats import norm

    if n_a <= 0 or n_b <= 0:
        return None
    z = 1.959963984540054
    pa, pb = k_a / n_a, k_b / n_b

    def wilson(p: float, n: int) -> tuple[float, float]:
        c = p + z * z / (2 * n)
        h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (c - h) / (1 + z * z / n), (c + h) / (1 + z * z / n)

    la, ua = wilson(pa, n_a)
    lb, ub = wilson(pb, n_b)
    d = pa - pb
    lo = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    pool = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pool * (1 - pool) * (1 / n_a + 1 / n_b))
    p = 1.0 if se == 0 else float(2 * norm.sf(abs(d) / se))
    return {"mean_diff": d, "ci_low": lo, "ci_high": hi, "p_value": p, "n": int(min(n_a, n_b)),
            "n_a": int(n_a), "n_b": int(n_b), "rate_a": pa, "rate_b": pb,
            "test_name": "two-proportion z-test (pooled, two-sided), Newcombe hybrid score 95% CI"}


def run_study(study: str, title: str, fn: Any, quick: bool, workdir: Path) -> dict[str, Any]:
    """Call a study's ``fn(quick, workdir) -> {claims, tables, size, ...}`` and time it."""
    import platform

    t0 = time.perf_counter()
    body = fn(quick, workdir)
    seconds = round(time.perf_counter() - t0, 1)
    for c in body["claims"]:  # every claim of a study comes from its one run (skin: two audits, both timed)
        c.setdefault("run_time_s", seconds)
    return {"study": study, "title": title, "quick": quick, "seconds": seconds,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
            **body}


# -- results JSON and docs/findings.md ---------------------------------------------------------

def write_result(res: dict[str, Any], results_dir: Path) -> Path:
    from medxai._util.io import atomic_write_json

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{res['study']}.json"
    atomic_write_json(path, res)
    return path


def _f(v: Any, nd: int = 3) -> str:
    return "n/a" if not _finite(v) else f"{float(v):.{nd}g}"


def claim_cells(c: Mapping[str, Any]) -> list[str]:
    """The markdown cells of one claim (the test reads them back to check JSON and markdown agree)."""
    ci = f"{_f(c['ci_low'])} to {_f(c['ci_high'])}" if _finite(c.get("ci_low")) else "n/a"
    word = c["verdict"] if c["verdict"] != "shown" else "**shown**"
    return [c["id"], c["claim"].replace("|", "/"), c["tested"].replace("|", "/"), _f(c.get("effect")), ci,
            _f(c.get("p_value"), 2), str(c["n"]) if c.get("n") is not None else "n/a", word]


def render(results: list[dict[str, Any]], expected: list[str] | None = None) -> str:
    """docs/findings.md from the studies' results: a section per study with its size and run time;
    the studies of ``expected`` without results are listed as not run."""
    lines = ["# Findings of the reproduced studies on their synthetic stand-ins", "",
             "Generated by `python -m benchmarks.findings` (`make findings`) from "
             "`benchmarks/results/findings/*.json`. Each study runs its example config",
             "(`examples/*.yaml`) through `medxai.pipeline.audit.run_audit(..., synthetic=True)` at a small",
             "stated size with tiny networks standing in for the study's. A claim is **shown** when the 95% CI",
             "of its effect excludes zero in the claimed direction and its test agrees (p < 0.05); *refuted* when",
             "the CI excludes zero the other way (and a two-sided test agrees); *not shown* otherwise (CI containing",
             "zero, or CI and test disagreeing); *undetermined* when it could not be computed. Effects, CIs, tests,",
             "p-values and n are in the results JSON. These are small models on synthetic",
             "data: a claim not shown here does not refute the study on its real data.", ""]
    have = {r["study"] for r in results}
    missing = [s for s in expected or [] if s not in have]
    if missing:
        lines += ["Not run at this size (no results JSON): " + ", ".join(f"`{s}`" for s in missing)
                  + " (`python -m benchmarks.findings --only STUDY`).", ""]
    lines += ["| study | run time | shown | not shown | refuted | undetermined |", "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r["study"]):
        lines.append(f"| {r['study']} | {r['seconds']:.0f} s | "
                     + " | ".join(str(sum(c["verdict"] == v for c in r["claims"])) for v in VERDICTS) + " |")
    lines.append("")
    for r in sorted(results, key=lambda r: r["study"]):
        lines += _section(r)
    return "\n".join(lines) + "\n"


def _section(r: Mapping[str, Any]) -> list[str]:
    counts = {v: sum(c["verdict"] == v for c in r["claims"]) for v in VERDICTS}
    lines = [f"## {r['study']}: {r['title']}", "",
             f"Run time: {r['seconds']:.0f} s ({'quick smoke size' if r['quick'] else 'full stated size'}, "
             f"{r['date']}).", "", f"Size: {r['size']}", ""]
    if r.get("context"):
        lines += [r["context"], ""]
    lines += ["| id | claim (the study's words) | tested | effect | 95% CI | p | n | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(claim_cells(c)) + " |" for c in r["claims"]]
    lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    why: dict[str, list[str]] = {}
    for c in r["claims"]:
        if c.get("reason"):
            why.setdefault(c["reason"], []).append(c["id"])
    if why:
        lines += ["Not judged: " + "; ".join(f"{', '.join(ids)}: {reason}" for reason, ids in why.items()) + ".", ""]
    for t in r.get("tables", []):
        lines += [f"**{t['title']}**", "", "| " + " | ".join(t["columns"]) + " |",
                  "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in t["rows"]]
        lines += [""] + ([t["note"], ""] if t.get("note") else [])
    return lines


def write_doc(results_dir: Path, doc: Path, expected: list[str] | None = None) -> Path:
    """Regenerate ``doc`` from every ``STUDY.json`` in ``results_dir``."""
    from medxai._util.io import atomic_write_text

    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(doc, render(results, expected))
    return doc


def ci_text(s: Mapping[str, Any] | None, key: str = "mean") -> str:
    """'0.81 (0.75-0.86)' for a summary/metric dict with value or mean and ci_low / ci_high."""
    if not s:
        return "n/a"
    v = s.get(key, s.get("value"))
    return f"{_f(v)} ({_f(s.get('ci_low'))}-{_f(s.get('ci_high'))})"


def shrink(raw: dict[str, Any], *, size: int, n: tuple[int, int, int], arch: str | dict[str, str] | None,
           epochs: int, n_boot: int, n_score: int, n_show: int = 4, batch_size: int = 32,
           drop: tuple[str, ...] = ("pretrained", "freeze", "preset")) -> dict[str, Any]:
    """The example config at a stated size: image side, split sizes, network (one name, or per model),
    at most ``epochs`` epochs, bootstrap and explanation counts; drops the model keys ``drop``
    (weights paths: nothing is downloaded, tiny networks train from scratch; freezing random layers)."""
    import copy

    raw = copy.deepcopy(raw)
    raw["data"]["synthetic"].update(size=size, n_train=n[0], n_val=n[1], n_test=n[2])
    for m in raw["models"]:
        if arch is not None:
            m["arch"] = arch if isinstance(arch, str) else arch[m["name"]]
        for k in drop:
            m.pop(k, None)
        t = m.setdefault("train", {})
        t["epochs"] = max(1, min(int(t.get("epochs", epochs)), epochs))
        t["batch_size"] = batch_size
    raw["evaluation"] = {"n_boot": n_boot}
    raw["explain"].update(n_show=min(n_show, n_score), n_score=n_score)
    raw.setdefault("score", {}).update(n_boot=n_boot)
    for k in ("attack", "corruption"):
        if raw.get(k, {}).get("enabled", True):
            raw[k]["n"] = min(int(raw[k].get("n", n[2])), n[2])
    raw.setdefault("subgroups", {})["n_permutations"] = min(200, n_boot)
    return raw


def trained_model(res: Any, name: str) -> Any:
    """Model ``name`` of an audit (its best checkpoint), in eval mode."""
    from medxai.runs import load_run

    d = stage_dir(res, f"train/{name}")
    if d is None:
        raise KeyError(f"the audit trained no model {name!r}")
    return load_run(d / "run")[0].eval()


def audit_sample(raw: dict[str, Any], n: int, split: str = "test") -> Any:
    """The audit's evaluation sample of ``n`` images (``medxai.pipeline.data.eval_sample``: the same
    stratified seeded prefix the audit draws, so ids and order agree with its scores)."""
    from medxai.pipeline.config import load_config
    from medxai.pipeline.data import build_datasets, eval_sample

    cfg = load_config(raw)
    ds, _ = build_datasets(cfg.data, synthetic=True, splits=(split,))
    return eval_sample(ds[split], n, seed=cfg.seed)


def paired_bootstrap(stat: Any, n: int, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """A paired statistic ``stat(index) -> float`` (e.g. a difference of two models' AUCs on the same
    images): point value, 95% percentile bootstrap CI over resampled images and the two-sided bootstrap
    p-value 2 min(P*(d <= 0), P*(d >= 0)) (replicates shifted to the null are not needed at this use)."""
    rng = np.random.default_rng(seed)
    point = float(stat(np.arange(n)))
    reps = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], float)
    reps = reps[np.isfinite(reps)]
    if not reps.size or not math.isfinite(point):
        return {"mean_diff": point, "ci_low": None, "ci_high": None, "p_value": None, "n": n}
    lo, hi = np.percentile(reps, [2.5, 97.5])
    p = min(1.0, 2 * min((1 + np.sum(reps <= 0)) / (1 + reps.size), (1 + np.sum(reps >= 0)) / (1 + reps.size)))
    return {"mean_diff": point, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p), "n": n,
            "test_name": "paired percentile bootstrap over images (95% CI; two-sided bootstrap p)"}
