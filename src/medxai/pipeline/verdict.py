"""The scorecard: one row per dimension and model, judged against stated thresholds, and a verdict.

``scorecard(report, cfg)`` reads only ``report.json``'s sections (so the model card and the HTML
report show the same numbers) and returns ``{"thresholds": ..., "models": {name: {"rows": [...],
"verdict": str, "at_chance": bool}}}``. A row: ``dimension``, ``metric``, ``value``, ``ci_low``,
``ci_high``, ``threshold`` (pass / warn limits and direction), ``status`` (``pass`` | ``warn`` |
``fail`` | ``not measured``) and ``reason`` when not measured or failed for a stated cause.

A model whose predictions collapse to one class, or whose discrimination CI includes chance,
fails discrimination, and every other row says "not meaningful for a model at chance": a model
that knows nothing is not robust, well calibrated or well explained, whatever those numbers say.
The one exception is evidence of shortcut reliance (a failing or warning intervention row): it
often explains why the model is at chance on data where the shortcut no longer holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from medxai.pipeline.config import AuditConfig, VerdictConfig

__all__ = ["DIMENSIONS", "chance_level", "scorecard"]

DIMENSIONS = ("discrimination", "calibration", "subgroups", "adversarial robustness", "corruption robustness",
              "shortcut reliance", "explanation localisation", "explanation faithfulness", "explanation robustness",
              "sanity")
AT_CHANCE = "not meaningful for a model at chance"


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def discrimination_metric(task: str) -> str:
    """The task's discrimination metric: the one the subgroup analysis reports too."""
    from medxai.evaluate.subgroups import HEADLINE_METRIC

    return HEADLINE_METRIC[task]


def chance_level(metric: str, n_classes: int) -> float:
    """The metric's value for a model that knows nothing (AUC 0.5, balanced accuracy 1/K, kappa 0)."""
    if metric.startswith("auc"):
        return 0.5
    if metric.startswith("kappa"):
        return 0.0
    return 1.0 / max(n_classes, 1)


def _status(value: Any, limits: dict[str, float], higher: bool) -> str:
    if not _ok(value):
        return "not measured"
    better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    if better(value, limits["pass"]):
        return "pass"
    return "warn" if better(value, limits["warn"]) else "fail"


def _row(dimension: str, metric: str, value: Any, limits: dict[str, float], higher: bool, *,
         ci: tuple[Any, Any] = (None, None), reason: str | None = None, detail: str | None = None) -> dict:
    status = _status(value, limits, higher) if reason is None or _ok(value) else "not measured"
    return {"dimension": dimension, "metric": metric, "value": value if _ok(value) else None,
            "ci_low": ci[0] if _ok(ci[0]) else None, "ci_high": ci[1] if _ok(ci[1]) else None,
            "threshold": {**limits, "direction": "higher is better" if higher else "lower is better"},
            "status": status, "reason": reason if status in ("not measured", "fail") else None, "detail": detail}


def _missing(dimension: str, metric: str, limits: dict[str, float], higher: bool, reason: str) -> dict:
    return _row(dimension, metric, None, limits, higher, reason=reason)


# -- one function per dimension: (report, model name, verdict config, audit config) -> row ------

def _discrimination(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    task = rep["data"]["task"]
    metric = discrimination_metric(task)
    e = rep["models"][m]["metrics"].get(metric) or {}
    row = _row("discrimination", metric, e.get("value"), v.discrimination, True, ci=(e.get("ci_low"), e.get("ci_high")),
               reason=None if _ok(e.get("value")) else f"{metric} could not be computed")
    chance = chance_level(metric, len(rep["data"]["class_names"]))
    collapsed = _collapsed(rep["models"][m])
    lo, hi = row["ci_low"], row["ci_high"]
    if collapsed is not None:
        row.update(status="fail", reason=f"every prediction is class {collapsed!r}")
    elif _ok(lo) and _ok(hi) and lo <= chance <= hi:
        row.update(status="fail", reason=f"the 95% CI {lo:.2f}-{hi:.2f} includes chance ({chance:.2f})")
    row["chance"] = chance
    return row


def _collapsed(model_section: dict) -> str | None:
    """The one class every prediction falls in (from the confusion matrix: rows true, columns predicted)."""
    conf = model_section.get("confusion")
    if not conf:
        return None
    cols = [sum(r[j] for r in conf["matrix"]) for j in range(len(conf["labels"]))]
    used = [j for j, c in enumerate(cols) if c > 0]
    return conf["labels"][used[0]] if len(used) == 1 and sum(cols) > 1 else None


def _calibration(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    e = rep["models"][m]["metrics"].get("ece") or {}
    return _row("calibration", "ece", e.get("value"), v.calibration_ece, False,
                reason=None if _ok(e.get("value")) else "the expected calibration error could not be computed")


def _subgroups(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    sg = (rep.get("subgroups") or {}).get("models", {}).get(m)
    if not sg:
        reason = (rep.get("subgroups") or {}).get("reason") or "the data declare no subgroups (groups: in the spec)"
        return _missing("subgroups", "worst-group gap", v.subgroup_gap, False, reason)
    gaps = [(name, g) for name, g in sg.get("variables", {}).items() if _ok(g.get("gap"))]
    if not gaps:
        why = "; ".join(f"{n}: {g.get('reason')}" for n, g in sg.get("variables", {}).items() if g.get("reason"))
        return _missing("subgroups", "worst-group gap", v.subgroup_gap, False,
                        why or "fewer than two subgroups could be measured")
    name, g = max(gaps, key=lambda t: t[1]["gap"])
    ci = g.get("gap_ci") or {}
    p = g.get("p_value")
    return _row("subgroups", f"worst-group gap in {sg.get('metric', 'the headline metric')} ({name}: {g['worst']} vs "
            f"{g['best']})", g["gap"], v.subgroup_gap, False, ci=(ci.get("low"), ci.get("high")),
                detail=f"permutation p = {p:.3f}" if _ok(p) else None)


def _reference_eps(rep: dict, v: VerdictConfig) -> tuple[int, str] | None:
    att = rep["robustness"].get("attack")
    if not att:
        return None
    eps = att["eps"]
    want = v.reference_eps if v.reference_eps is not None else next((e for e in eps if e > 0), None)
    if want is None:
        return None
    i = min(range(len(eps)), key=lambda k: abs(eps[k] - want))
    return i, att["eps_labels"][i]


def _adversarial(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    ref = _reference_eps(rep, v)
    if ref is None:
        return _missing("adversarial robustness", "attack success rate", v.attack_success, False,
                        "no attack was run (attack.enabled) or no budget above 0")
    i, label = ref
    a = rep["robustness"]["attack"]["models"][m]
    rate, n = a["success_rate"][i], a.get("n")
    if n == 0:
        return _missing("adversarial robustness", f"attack success rate at eps {label}", v.attack_success, False,
                        "the model classifies none of the attacked images correctly, so no attack can succeed")
    return _row("adversarial robustness", f"attack success rate at eps {label} ({cfg.attack.norm})", rate,
                v.attack_success, False, ci=_wilson(rate, n))


def _wilson(p: Any, n: Any) -> tuple[Any, Any]:
    """The Wilson score 95% interval of a proportion p of n trials (scipy's binomtest)."""
    if not _ok(p) or not isinstance(n, int) or n < 1:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(round(p * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _corruption(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    cor = rep["robustness"].get("corruption")
    if not cor:
        return _missing("corruption robustness", "mean drop", v.corruption_drop, False,
                        "no corruption was run (corruption.enabled)")
    c = cor["models"][m]
    drops = [(name, x) for name, row in c["drops"].items() for x in row if _ok(x)]
    worst = max(drops, key=lambda t: t[1]) if drops else None
    detail = f"worst: {worst[0]} ({worst[1]:+.3f})" if worst else None
    return _row("corruption robustness", f"mean drop in {cor['metric'].replace('_', ' ')}", c.get("mean_drop"),
                v.corruption_drop, False, detail=detail)


def _shortcut(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    iv = (rep.get("intervention") or {}).get("models", {}).get(m)
    if not iv or not iv.get("difference"):
        reason = (rep.get("intervention") or {}).get("reason") or "no shortcut region was declared (intervention:)"
        return _missing("shortcut reliance", "flip rate: region minus control", v.shortcut_flip, False, reason)
    d = iv["difference"]
    lo, hi = d.get("flip_rate_ci") or (None, None)
    detail = (f"region {iv['region']['flip_rate']:.2f}, control {iv['control']['flip_rate']:.2f}"
              + (f", counterfactual {iv['counterfactual']['flip_rate']:.2f}" if iv.get("counterfactual") else "")
              + f" ({iv['n']} images, {iv['method']})")
    return _row("shortcut reliance", "prediction flips when the shortcut is removed, minus a random region",
                d.get("flip_rate"), v.shortcut_flip, False, ci=(lo, hi), detail=detail)


def _summary_row(rep: dict, m: str, metric: str) -> dict | None:
    methods = rep.get("explanations", {}).get("methods") or []
    rows = [s for s in rep["scores"]["summary"] if s["model"] == m and s["metric"] == metric]
    rows.sort(key=lambda s: methods.index(s["method"]) if s["method"] in methods else len(methods))
    return next((s for s in rows if _ok(s.get("mean"))), None)


def _scored(rep: dict, m: str, dimension: str, metric: str, limits: dict[str, float], higher: bool,
            hint: str) -> dict:
    """A dimension read from one metric's summary row (the first explained method with a value)."""
    s = _summary_row(rep, m, metric)
    if s is None:
        why = next((n["reason"] for n in rep["scores"].get("not_measured", []) if n["model"] == m
                    and n["metric"] == metric), None)
        return _missing(dimension, metric, limits, higher, why or f"{metric} was not scored ({hint})")
    return _row(dimension, f"{metric} ({s['method']})", s["mean"], limits, higher,
                ci=(s.get("ci_low"), s.get("ci_high")))


def _localisation(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    return _scored(rep, m, "explanation localisation", v.localisation_metric, v.localisation, True, "score.metrics")


def _faithfulness(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    rows = [r for r in rep["scores"].get("faithfulness", []) if r["model"] == m and _ok(r.get("value"))]
    if not rows:
        return _missing("explanation faithfulness", "deletion vs random maps", v.faithfulness, True,
                        "deletion was not scored (score.metrics) or no image could be scored")
    r = rows[0]
    return _row("explanation faithfulness", f"deletion AUC of random maps minus {r['method']}'s", r["value"],
                v.faithfulness, True, ci=(r.get("ci_low"), r.get("ci_high")),
                detail=f"{r['method']} {r['method_mean']:.3f} vs random {r['random_mean']:.3f} ({r['n']} images)")


def _explanation_robustness(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    """How much the map changes under imperceptible input noise (max-sensitivity by default); only
    when the audit scored it (it re-explains every image several times)."""
    return _scored(rep, m, "explanation robustness", v.explanation_robustness_metric, v.explanation_robustness,
                   False, "add it to score.metrics")


def _sanity(rep: dict, m: str, v: VerdictConfig, cfg: AuditConfig) -> dict:
    rows = [s for s in rep.get("sanity", []) if s["model"] == m and _ok(s.get("score"))]
    limits = {"pass": v.sanity_spearman, "warn": v.sanity_spearman}
    if not rows:
        why = next((s["reason"] for s in rep.get("sanity", []) if s["model"] == m and s.get("reason")), None)
        return _missing("sanity", "Spearman after randomisation", limits, False,
                        why or "the model-randomisation check was not run (score.sanity)")
    s = max(rows, key=lambda r: r["score"])  # the worst method decides
    return _row("sanity", f"mean Spearman |map| after cascading randomisation ({s['method']})", s["score"],
                limits, False)


_DIMENSION_FNS: tuple[Callable[[dict, str, VerdictConfig, AuditConfig], dict], ...] = (
    _discrimination, _calibration, _subgroups, _adversarial, _corruption, _shortcut, _localisation, _faithfulness,
    _explanation_robustness, _sanity)


def _verdict(name: str, rows: list[dict]) -> str:
    parts = []
    for status, word in (("fail", "fails"), ("warn", "warns"), ("pass", "passes")):
        hit = [r for r in rows if r["status"] == status]
        if hit:
            items = [f"{r['dimension']} ({_fmt(r)}{'; ' + r['reason'] if r.get('reason') else ''})" for r in hit]
            parts.append(f"{word}: " + ", ".join(items))
    missing = [r["dimension"] for r in rows if r["status"] == "not measured"]
    if missing:
        parts.append("not measured: " + ", ".join(missing))
    return f"{name}: " + "; ".join(parts) + "."


def _fmt(r: dict) -> str:
    if not _ok(r.get("value")):
        return "-"
    ci = f", CI {r['ci_low']:.2f}-{r['ci_high']:.2f}" if _ok(r.get("ci_low")) and _ok(r.get("ci_high")) else ""
    return f"{r['value']:.3f}{ci}"


def scorecard(rep: dict, cfg: AuditConfig) -> dict:
    """The scorecard of every model in ``rep`` (report.json) under ``cfg.verdict``'s thresholds."""
    v = cfg.verdict
    out: dict[str, Any] = {"thresholds": v.model_dump(mode="json"), "models": {}}
    for m in rep["models"]:
        rows = [fn(rep, m, v, cfg) for fn in _DIMENSION_FNS]
        at_chance = rows[0]["status"] == "fail" and rows[0].get("reason") is not None
        if at_chance:  # evidence of reliance on a shortcut stays (it explains the failure); nothing else is judged
            for r in rows[1:]:
                if not (r["dimension"] == "shortcut reliance" and r["status"] in ("fail", "warn")):
                    r.update(status="not measured", reason=AT_CHANCE)
        out["models"][m] = {"rows": rows, "at_chance": at_chance, "verdict": _verdict(m, rows)}
    return out
