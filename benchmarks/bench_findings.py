"""The skin and fundus studies' findings at demo size, on their synthetic stand-ins.

Runs ``examples/adversarial-saliency-skin.yaml`` and ``examples/fundus-dr-robustness.yaml`` through
``medxai audit --synthetic`` scaled to the demo's size (48 px, 800 / 200 / 200 images, the
``resnet8`` network instead of ResNet-18 / EfficientNet-B0, fewer epochs; L2 budgets scaled with
the image side) and checks the studies' claims against the audit's own numbers:

- skin (Margeloiu et al. 2020): adversarially trained models' maps concentrate more on the lesion
  (energy pointing game, paired difference with CI) and are smoother (lower total variation), and
  adversarial training lowers the attack success rate;
- fundus (the DR robustness study): corruption training shrinks the accuracy drop under the four
  camera corruptions, and adversarial training lowers the success rate.

Each claim becomes a row (``shown`` yes/no with the numbers); full runs write ``docs/findings.md``.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._harness import row
from medxai._util.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs" / "findings.md"


def _scale(raw: dict[str, Any], quick: bool, *, epochs: int) -> dict[str, Any]:
    """The example at demo size (quick: a smoke-test size)."""
    raw = copy.deepcopy(raw)
    old = raw["data"]["synthetic"]["size"]
    size = 24 if quick else 48
    n = (32, 16, 16) if quick else (800, 200, 200)
    raw["data"]["synthetic"].update(size=size, n_train=n[0], n_val=n[1], n_test=n[2])
    for m in raw["models"]:
        m["arch"] = "resnet8"
        t = m.setdefault("train", {})
        t["epochs"] = 1 if quick else max(2, min(int(t.get("epochs", epochs)), epochs) if "init_from" not in m
                                          else min(int(t.get("epochs", 3)), 3))
        t["batch_size"] = 32
        obj = t.get("objective") or {}
        if obj.get("name") == "adversarial" and obj.get("norm") == "l2":  # L2 budgets scale with the side
            for k in ("eps", "step_size"):
                if k in obj:
                    obj[k] = float(obj[k]) * size / old
        if quick and obj.get("steps"):
            obj["steps"] = 2
    if raw["attack"].get("enabled", True):
        if raw["attack"].get("norm") == "l2":
            raw["attack"]["eps"] = [float(e) * size / old for e in raw["attack"]["eps"]]
        raw["attack"].update(n=n[2], steps=2 if quick else min(int(raw["attack"].get("steps", 10)), 10))
    if raw["corruption"].get("enabled", True):
        raw["corruption"]["n"] = n[2]
        if quick:
            raw["corruption"]["severities"] = [1]
    ex = raw["explain"]
    ex.update(n_show=2 if quick else 6, n_score=16 if quick else n[2])
    for name in ex["methods"]:
        o = ex.setdefault("options", {}).setdefault(name, {})
        method = o.get("method", name)
        if method == "smoothgrad":
            o["n_samples"] = 3 if quick else 16
        elif method == "integrated_gradients":
            o["n_steps"] = 4 if quick else 16
            if "n_baselines" in o:
                o["n_baselines"] = 2
        elif method == "occlusion":
            o.update(window=8, stride=8 if quick else 4)
    raw["evaluation"] = {"n_boot": 50 if quick else 1000}
    raw["score"].update(sanity=not quick, sanity_n=4, n_boot=50 if quick else 1000)
    return raw


def _audit(example: str, quick: bool, epochs: int, out: Path, keep: set[str] | None = None,
           methods: list[str] | None = None) -> tuple[dict, float]:
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    raw = _scale(yaml.safe_load((EXAMPLES / example).read_text()), quick, epochs=epochs)
    if keep is not None:
        raw["models"] = [m for m in raw["models"] if m["name"] in keep]
        raw["score"]["compare"] = [p for p in raw["score"].get("compare", []) if set(p) <= keep]
    if methods is not None:
        raw["explain"]["methods"] = methods
        raw["score"]["sanity_methods"] = [m for m in raw["score"].get("sanity_methods", []) if m in methods]
    t0 = time.perf_counter()
    res = run_audit(load_config(raw), out, synthetic=True)
    return res.report, time.perf_counter() - t0


def _summary(report: dict, model: str, method: str, metric: str) -> dict | None:
    return next((s for s in report["scores"]["summary"]
                 if (s["model"], s["method"], s["metric"]) == (model, method, metric)), None)


def _comparison(report: dict, a: str, b: str, method: str, metric: str) -> dict | None:
    return next((c for c in report["scores"]["comparisons"]
                 if (c["a"], c["b"], c["method"], c["metric"]) == (a, b, method, metric)), None)


def _f(v: Any, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}g}"


def _claim(study: str, claim: str, shown: bool | None, evidence: str, seconds: float, **extra: Any) -> dict:
    r = row(f"{study}: {claim}", "-", seconds, None, note=evidence, **extra)
    r["shown"] = shown
    return r


def _paired_claims(study: str, report: dict, a: str, b: str, methods: list[str], metric: str, better: str,
                   seconds: float) -> list[dict]:
    """One row per method: is model ``a`` better than ``b`` on ``metric`` (paired, 95% CI excludes 0)?"""
    rows = []
    for me in methods:
        c = _comparison(report, a, b, me, metric)
        if c is None:
            continue
        lo, hi, d = c.get("ci_low"), c.get("ci_high"), c.get("mean_diff", c.get("diff"))
        if not all(isinstance(v, float) and math.isfinite(v) for v in (lo, hi)):
            shown = None
        else:
            shown = bool(lo > 0) if better == "higher" else bool(hi < 0)
        ev = (f"{a} - {b} = {_f(d)} (95% CI {_f(lo)} to {_f(hi)}, Wilcoxon p {_f(c.get('p_value'), 2)}, "
              f"n {c.get('n')})")
        rows.append(_claim(study, f"{a} {metric} {better} than {b} ({me})", shown, ev, seconds,
                           metric=metric, method=me, diff=d, ci_low=lo, ci_high=hi))
    return rows


def _success_claim(study: str, report: dict, robust: str, standard: str, seconds: float) -> dict:
    att = report["robustness"]["attack"]
    i = len(att["eps"]) - 1
    sr = {n: att["models"][n]["success_rate"][i] for n in (robust, standard)}
    shown = sr[robust] < sr[standard] if all(v is not None for v in sr.values()) else None
    ev = (f"success at eps {att['eps_labels'][i]} ({att['norm']}): {robust} {_f(sr[robust])}, "
          f"{standard} {_f(sr[standard])}")
    return _claim(study, f"adversarial training lowers the attack success rate ({robust} vs {standard})", shown, ev,
                  seconds, success_robust=sr[robust], success_standard=sr[standard])


def run(quick: bool = False) -> dict[str, Any]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # -- skin: robust vs standard saliency --------------------------------------------------
        skin_models = {"standard", "robust"} if quick else None
        skin_methods = ["saliency", "gradcam"] if quick else None
        rep, s = _audit("adversarial-saliency-skin.yaml", quick, 8, Path(tmp) / "skin", skin_models, skin_methods)
        methods = rep["explanations"]["methods"]
        robust_variants = [m for m in ("robust", "robust-finetuned", "robust-first-layers") if m in rep["models"]]
        for a in robust_variants:
            rows += _paired_claims("skin", rep, a, "standard", methods, "energy_pointing_game", "higher", s)
            rows += _paired_claims("skin", rep, a, "standard", methods, "total_variation", "lower", s)
        rows.append(_success_claim("skin", rep, "robust", "standard", s))
        acc = {n: m["metrics"]["balanced_accuracy"]["value"] for n, m in rep["models"].items()}
        rows.append(_claim("skin", "clean balanced accuracy per model", None,
                           ", ".join(f"{n} {_f(v)}" for n, v in acc.items()), s))
        # -- fundus: corruption training and adversarial training -------------------------------
        fundus_models = {"standard", "corruption-1-4"} if quick else None
        rep, s = _audit("fundus-dr-robustness.yaml", quick, 8, Path(tmp) / "fundus", fundus_models,
                        ["ig_uniform"] if quick else None)
        cor = rep["robustness"]["corruption"]["models"]
        std = cor["standard"]["mean_drop"]
        for name, c in cor.items():
            if not name.startswith("corruption"):
                continue
            shown = None if c["mean_drop"] is None or std is None else c["mean_drop"] < std
            rows.append(_claim("fundus", f"corruption training ({name}) shrinks the mean accuracy drop", shown,
                               f"mean drop in {rep['robustness']['corruption']['metric']}: {name} {_f(c['mean_drop'])},"
                               f" standard {_f(std)} (clean {_f(c['clean'])} vs {_f(cor['standard']['clean'])})", s,
                               drop=c["mean_drop"], drop_standard=std))
        if "adversarial" in rep["models"]:
            rows.append(_success_claim("fundus", rep, "adversarial", "standard", s))
        kappa = {n: m["metrics"].get("kappa_quadratic", {}).get("value") for n, m in rep["models"].items()}
        rows.append(_claim("fundus", "clean quadratic kappa per model", None,
                           ", ".join(f"{n} {_f(v)}" for n, v in kappa.items()), s))
    if not quick:
        _write_doc(rows)
    return {"kind": "findings", "rows": rows}


def _write_doc(rows: list[dict]) -> None:
    word = {True: "shown", False: "**not shown**", None: "undetermined"}
    lines = ["# Findings of the reproduced studies at demo size", "",
             "Generated by `make bench` (`benchmarks/bench_findings.py`): the skin and fundus example configs run",
             "with `--synthetic` on their synthetic stand-ins, scaled to the demo's size (48 px, 800 / 200 / 200",
             "images, `resnet8` instead of ResNet-18 / EfficientNet-B0, at most 8 epochs, L2 budgets scaled with",
             "the image side). A paired claim is *shown* when the 95% bootstrap CI of the paired difference",
             "excludes zero in the claimed direction. These are small models on synthetic data: a claim that is",
             "not shown here says so plainly; it does not refute the study.", "",
             "| study | claim | result | evidence |", "|---|---|---|---|"]
    for r in rows:
        study, claim = r["work"].split(": ", 1)
        lines.append(f"| {study} | {claim} | {word[r['shown']] if 'per model' not in claim else '-'} | {r['note']} |")
    shown = sum(r["shown"] is True for r in rows)
    judged = sum(r["shown"] is not None for r in rows)
    lines += ["", "In plain words:", ""]
    kinds = {"energy_pointing_game": "robust models' maps put more attribution inside the lesion",
             "total_variation": "robust models' maps are smoother (lower total variation)",
             "shrinks": "corruption training shrinks the drop under the camera corruptions",
             "success": "adversarial training lowers the attack success rate"}
    for study in dict.fromkeys(r["work"].split(": ", 1)[0] for r in rows):
        for key, text in kinds.items():
            sel = [r for r in rows if r["work"].startswith(study + ":") and key in r["work"] and r["shown"] is not None]
            if sel:
                k = sum(r["shown"] for r in sel)
                verdict = "shown" if k == len(sel) else "not shown" if k == 0 else "partly shown"
                lines.append(f"- {study}: {text}: **{verdict}** ({k} of {len(sel)} model/method pairs).")
    lines += ["", f"{shown} of {judged} claims shown. Audit time: skin {rows[0]['medxai_s']:.0f} s, fundus "
              f"{rows[-1]['medxai_s']:.0f} s on this machine.", ""]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(DOCS, "\n".join(lines))
