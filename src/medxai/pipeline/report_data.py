"""Gather the stages' JSON results into ``report.json`` and state the headline findings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.attacks import format_eps
from medxai.pipeline.cache import StageResult
from medxai.pipeline.config import AuditConfig
from medxai.pipeline.data import EvalSample
from medxai.pipeline.robustness import headline


def _model_section(st: StageResult, ev: dict, class_names: list[str]) -> dict:
    """One model's panel: headline metrics with CIs, learning curves, confusion matrix."""
    import json

    res = ev["metrics"]
    ci = res.get("ci", {})
    metrics = {}
    for k, v in res["metrics"].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            c = ci.get(k, {})
            metrics[k] = {"value": float(v), "ci_low": c.get("low"), "ci_high": c.get("high")}
    hist = []
    mj = st.dir / "run" / "metrics.jsonl"
    if mj.is_file():
        for line in mj.read_text().splitlines():
            row = json.loads(line)
            hist.append({"epoch": row.get("epoch"), "train_loss": row.get("train_loss"),
                         "val_loss": row.get("val_loss")})
    out = {"arch": st.result.get("arch"), "objective": st.result.get("objective"), "metrics": metrics,
           "history": hist, "train_seconds": st.result.get("seconds"), "n_test": ev.get("n")}
    if st.result.get("source") == "card":  # an outside model: what was loaded and how its outputs were read
        out["source"] = "card"
        out["card"] = {k: st.result.get(k) for k in ("format", "file", "sha256", "output", "normalize",
                                                     "positive_class", "conversions", "warnings",
                                                     "onnx_max_abs_diff", "hooks_unavailable")}
    per_class = res.get("per_class") or {}
    recall = {c: (per_class.get(c) or {}).get("sensitivity") for c in class_names}
    if any(_ok(v) for v in recall.values()):
        out["per_class_recall"] = recall
    conf = res.get("confusion_matrix")
    if conf is not None and not isinstance(conf, dict) and len(conf) == len(class_names):
        out["confusion"] = {"labels": class_names, "matrix": conf}
    return out


def _paired_ratio(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Ratio of means a/b on paired samples with a seeded percentile-bootstrap 95% CI."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ma, mb = a[idx].mean(1), b[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ma / mb
    r = r[np.isfinite(r)]
    point = a.mean() / b.mean() if b.mean() else float("nan")
    lo, hi = (np.percentile(r, [2.5, 97.5]) if len(r) else (float("nan"), float("nan")))
    return float(point), float(lo), float(hi)


def assemble_report(cfg: AuditConfig, out: Path, data_st: StageResult, model_stages: dict[str, StageResult],
                    evals: dict[str, dict], attacks: dict[str, dict], corruptions: dict[str, dict],
                    gallery: StageResult | None, explained: dict[tuple[str, str], StageResult],
                    scores: dict[tuple[str, str], StageResult], sanity: list[dict], *, sample: EvalSample,
                    class_names: list[str], task: str,
                    unavailable: dict[tuple[str, str], str] | None = None, interventions: dict[str, dict] | None = None,
                    discovery: dict[str, StageResult] | None = None, skipped: dict[str, str] | None = None,
                    work: tuple[list[dict], dict[str, float | None]] | None = None) -> dict:
    """report.json: data, models, robustness, explanations, scores, sanity, shortcut, then findings;
    ``skipped``: the stages that did not run (on volumes) with their reasons, listed under ``skipped``;
    ``work``: (the stage runner's events, FLOPs per image per model) for ``report["work"]`` (:func:`work_table`)."""
    models = list(model_stages)
    methods = list(cfg.explain.methods)
    positive = data_st.result.get("positive_class")
    report: dict[str, Any] = {
        "title": f"medxai audit: {cfg.name}",
        "subtitle": f"{data_st.result['description']} · task {task}"
                    + (f" (positive class {positive})" if positive else "") + f" · models: {', '.join(models)}",
        "config": cfg.model_dump(mode="json"),
        "data": {k: data_st.result.get(k) for k in ("description", "class_names", "splits", "task", "split",
                                                    "positive_class", "sample")},
        "models": {n: _model_section(model_stages[n], evals[n], class_names) for n in models},
        "robustness": _robustness_section(cfg, attacks, corruptions, skipped or {}),
        "assets": {"data_examples": _rel(out, data_st.dir / data_st.result["examples"])},
    }
    if gallery is not None:
        report["assets"]["gallery"] = _rel(out, gallery.dir / gallery.result["png"])
    report["subgroups"] = _subgroup_section(out, evals)
    report["intervention"] = _intervention_section(interventions or {})
    report["discovery"] = {"models": {m: _discovery_row(out, st) for m, st in (discovery or {}).items()}}
    if skipped and "discovery" in skipped:
        report["discovery"]["reason"] = skipped["discovery"]
    report["skipped"] = [{"stage": k, "reason": v} for k, v in (skipped or {}).items()]
    if sample.volumes:
        report["data"]["volumes"] = True
    report["explanations"] = _explanation_section(cfg, out, explained, sample, models, methods, class_names, task)
    report["explanations"]["unavailable"] = [{"model": mo, "method": me, "reason": why}
                                             for (mo, me), why in (unavailable or {}).items()]
    report["assets"]["explanation_grid"] = report["explanations"].pop("grid")
    rows, meta = _score_rows(scores)
    by_key = {(r["model"], r["method"], r["metric"]): {} for r in rows}
    for r in rows:
        by_key[(r["model"], r["method"], r["metric"])][r["id"]] = r["value"]
    report["scores"] = {"summary": _score_summary(cfg, rows, meta),
                        "comparisons": _comparisons(cfg, by_key, meta, models, methods),
                        "not_measured": _not_measured(cfg, scores), "faithfulness": _faithfulness(cfg, scores)}
    report["sanity"] = sanity
    sc_rows = [{"model": mo, "method": me, **st.result["shortcut"]}
               for (mo, me), st in scores.items() if st.result.get("shortcut")]
    if sc_rows:
        report["shortcut"] = {"description": "Share of positive attribution on the laterality marker and how often "
                              "the map's maximum lies on it, over test images that carry the marker.",
                              "rows": sc_rows}
    from medxai.pipeline.verdict import scorecard

    report["scorecard"] = scorecard(report, cfg)
    report["findings"] = findings(report, by_key, models, methods, task, cfg)
    if work is not None:
        report["work"] = work_table(*work)
    return report


_UNCOUNTED = {"train": "training builds its own model copy: its forwards and parameter backwards are not counted"}
WORK_NOTES = [
    "forward_images: images through the model's top module, counted by a forward pre-hook (model(x) calls; "
    "a direct model.forward(x) is not counted)",
    "backward_images: input-backwards, counted by a tensor hook on the model's input each time a gradient "
    "reaches it (saliency, integrated gradients, PGD steps); backwards that stop at a layer (Grad-CAM) are not "
    "counted",
    "gflops: estimated as (forward_images + 2 x backward_images) x the model's FLOPs per image, measured once by "
    "torch.utils.flop_counter.FlopCounterMode on one image (a multiply-add is 2 FLOPs; a backward ~ 2x its "
    "forward); None where the FLOPs could not be measured",
    "a reused (cached) stage did no work in this run: seconds_when_computed is the time it took when it ran",
]


def work_table(events: list[dict], flops: dict[str, float | None]) -> dict:
    """Per stage of this run: seconds, whether reused, model forwards / input-backwards and estimated
    GFLOPs (rows in run order), with totals, the FLOPs per image of each model and the conventions."""
    rows = []
    for ev in events:
        w = ev.get("work") or {}
        family = ev["stage"].split("/")[0]
        row: dict[str, Any] = {"stage": ev["stage"], "seconds": ev["seconds"], "cached": ev["cached"]}
        if ev["cached"]:
            row.update(forward_calls=0, forward_images=0, backward_images=0, gflops=0.0,
                       seconds_when_computed=None if w.get("seconds") is None else round(w["seconds"], 3))
        elif family in _UNCOUNTED or "models" not in w:
            row.update(forward_calls=None, forward_images=None, backward_images=None, gflops=None,
                       note=_UNCOUNTED.get(family, "not counted"))
        else:
            per = w["models"].values()
            tot = {k: (None if any(m[k] is None for m in per) else sum(m[k] for m in per))
                   for k in ("calls", "images", "backward_images", "flops")}
            row.update(forward_calls=tot["calls"], forward_images=tot["images"], backward_images=tot["backward_images"],
                       gflops=None if tot["flops"] is None else tot["flops"] / 1e9, models=w["models"])
        rows.append(row)

    def total(k: str) -> float | int | None:
        vals = [r[k] for r in rows if r.get(k) is not None]
        return None if not vals else round(sum(vals), 3) if k == "seconds" else sum(vals)

    totals = {k: total(k) for k in ("seconds", "forward_calls", "forward_images", "backward_images", "gflops")}
    return {"rows": rows, "total": totals, "flops_per_image": dict(flops), "notes": list(WORK_NOTES)}


def _subgroup_section(out: Path, evals: dict[str, dict]) -> dict:
    """Per model: ``medxai.evaluate.subgroups`` on the audited split, and its bar plot (when the data have groups)."""
    models = {}
    for m, ev in evals.items():
        if ev.get("subgroups"):
            png = ev.get("subgroups_png")
            models[m] = {**ev["subgroups"], "png": _rel(out, png) if png else None}
    return {"models": models} if models else {"models": {}, "reason": "the data declare no subgroups (groups: in "
                                                            "a CSV spec, or sites=True for a synthetic study)"}


def _discovery_row(out: Path, st: StageResult) -> dict:
    """One model's SpRAy result with its figures' paths relative to the run directory."""
    r = dict(st.result, method=st.name.rsplit("/", 1)[-1])
    for key in ("png", "class_means_png"):
        r[key] = _rel(out, st.dir / r[key]) if r.get(key) else None
    return r


def _intervention_section(interventions: dict[str, dict]) -> dict:
    """Per model: reliance on the shortcut region by intervention; the reason when none was measured."""
    models = {m: r for m, r in interventions.items() if r.get("difference") is not None}
    reasons = [r["reason"] for r in interventions.values() if r.get("reason")]
    return {"models": models, **({"reason": reasons[0]} if reasons and not models else {})}


def _not_measured(cfg: AuditConfig, scores: dict[tuple[str, str], StageResult]) -> list[dict]:
    """Metrics asked for but not computable (no masks, no model...), with the reason: never dropped silently."""
    out = []
    for (mo, me), st in scores.items():
        for metric, why in (st.result.get("skipped") or {}).items():
            out.append({"model": mo, "method": me, "metric": metric, "reason": str(why)})
        for metric in cfg.score.metrics:
            cols = [c for c in st.result.get("metrics", {}) if c == metric or c.startswith(metric + "_")]
            vals = [v for c in cols for v in st.result["metrics"][c]["values"]]
            if cols and vals and all(v is None for v in vals) and metric not in (st.result.get("skipped") or {}):
                out.append({"model": mo, "method": me, "metric": metric,
                            "reason": "no image could be scored (every value is undefined)"})
    return out


def _faithfulness(cfg: AuditConfig, scores: dict[tuple[str, str], StageResult]) -> list[dict]:
    """Per (model, method): deletion AUC of seeded random maps minus the method's, paired over images
    (positive: the method finds the evidence faster than chance), with a bootstrap CI."""
    from medxai.metrics import compare

    out = []
    for (mo, me), st in scores.items():
        base = (st.result.get("random_baseline") or {}).get("deletion")
        mine = (st.result.get("metrics", {}).get("deletion") or {}).get("values")
        if not base or not mine:
            continue
        def arr(vals: list) -> np.ndarray:
            return np.array([float("nan") if v is None else v for v in vals], dtype=float)

        c = compare(arr(base), arr(mine), n_boot=cfg.score.n_boot, seed=cfg.seed)
        out.append({"model": mo, "method": me, "value": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                    "random_mean": c["mean_a"], "method_mean": c["mean_b"], "n": c["n"], "p_value": c["p_value"]})
    return out


def _rel(out: Path, p: str | Path) -> str:
    return str(Path(p).relative_to(out))


def _robustness_section(cfg: AuditConfig, attacks: dict[str, dict], corruptions: dict[str, dict],
                        skipped: dict[str, str] | None = None) -> dict:
    """The attack sweep (success rate, robust accuracy per budget) and corruption drops, per model."""
    section: dict[str, Any] = {}
    off = [k for k, on in (("attack.enabled", cfg.attack.enabled), ("corruption.enabled", cfg.corruption.enabled))
           if not on]
    vol = [f"corruptions: {skipped[k]}" for k in ("corruption", "corruption/some") if k in (skipped or {})]
    if not attacks and not corruptions:
        section["reason"] = "; ".join(([f"{' and '.join(off)} {'are' if len(off) > 1 else 'is'} false"] if off else [])
                                      + vol) or "no attack or corruption result"
    elif off or vol:
        section["not_run"] = [f"{k} is false" for k in off] + vol
    if attacks:
        eps = next(iter(attacks.values()))["eps"]
        section["attack"] = {
            "norm": cfg.attack.norm, "steps": cfg.attack.steps, "eps": eps,
            "eps_labels": [format_eps(e, cfg.attack.norm) for e in eps],
            "models": {n: {"success_rate": a["success_rate"], "robust_accuracy": a["robust_accuracy"],
                           "n": a.get("n_correct", a.get("n")),
                           **{k: a[k] for k in ("autoattack", "radius") if k in a}}
                       for n, a in attacks.items()}}
    if corruptions:
        first = next(iter(corruptions.values()))
        section["corruption"] = {
            "metric": first["metric"], "severities": first["severities"],
            "models": {n: {"clean": c["clean"], "mean_drop": c["mean_drop"], "drops": c["drops"]}
                       for n, c in corruptions.items()}}
    return section


def _explanation_section(cfg: AuditConfig, out: Path, explained: dict[tuple[str, str], StageResult],
                         sample: EvalSample, models: list[str], methods: list[str], class_names: list[str],
                         task: str) -> dict:
    """Image and overlay PNGs (one colour scale per method across models), what each map explains
    (``captions`` per ``model|method`` and cell) and the grid (under ``grid``).

    A cell is one (image, rank): with ``explain.top_k`` every image has one cell per explained
    finding (rank 1 = most probable), else one. The finding comes from the stage's saved
    targets; the prediction is named only where the targets are it (target rule ``pred``)."""
    from safetensors.torch import load_file

    from medxai.pipeline.figures import explanation_grid, heat_png, image_png

    loaded = {k: load_file(str(st.dir / "maps.safetensors")) for k, st in explained.items()}
    n_show = min(cfg.explain.n_show, len(sample))
    spatial = sample.x.ndim - 2
    ranks = max((t["maps"].shape[1] for t in loaded.values() if t["maps"].ndim == spatial + 3), default=1)
    cells = [(i, r) for i in range(n_show) for r in range(ranks)]
    rows = [i for i, _ in cells]
    maps = {k: _cell_maps(t["maps"], cells, spatial) for k, t in loaded.items()}
    viewer = None
    if sample.volumes:  # the slice viewer shows the volumes; the PNGs show each one's key axial slice
        scales = _scales(maps, models, methods)
        viewer = _viewer(out, sample.subset(n_show), maps, cells, scales, class_names, task)
        sample, maps = _key_slices(sample.subset(n_show), maps, cells)
    rule = _target_rule(cfg, task)
    findings = {k: _cell_findings(t.get("targets"), cells, class_names, t.get("probs")) for k, t in loaded.items()}
    captions = {f"{mo}|{me}": [_caption(f, rule, task) for f in findings[(mo, me)]] for mo, me in loaded}
    assets = out / "report_assets"
    scales = _scales(maps, models, methods) if viewer is None else scales
    labels = [_label(sample.y[i], class_names, task) for i in range(n_show)]
    for i in range(n_show):
        image_png(sample.x[i], assets / f"img{i}.png")
    images = [{"id": sample.ids[i], "label": labels[i], "rank": r + 1, "png": _rel(out, assets / f"img{i}.png")}
              for i, r in cells]
    overlays = {}
    for (mo, me), m in maps.items():
        paths = []
        for c, (i, r) in enumerate(cells):
            p = assets / (f"{mo}--{me}--{i}" + (f"--{r}" if ranks > 1 else "") + ".png").replace("/", "_")
            heat_png(m[c, 0], scales[me], p)
            paths.append(_rel(out, p))
        overlays[f"{mo}|{me}"] = paths
    grid = assets / "explanation_grid.png"
    explanation_grid(sample.x[rows], maps, models, methods, scales, grid, [labels[i] for i in rows],
                     captions={k: [f["explains"] for f in v] for k, v in findings.items()})
    return {"methods": methods, "models": models, "output": cfg.explain.output, "target_rule": rule,
            "top_k": ranks if ranks > 1 else None, "images": images, "overlays": overlays, "captions": captions,
            "scales": scales, "grid": _rel(out, grid), **({"viewer": viewer} if viewer else {})}


def _scales(maps: dict[tuple[str, str], torch.Tensor], models: list[str], methods: list[str]) -> dict[str, float]:
    """One colour scale per method across models: the 99.5th percentile of |map| (a strided subset
    past torch.quantile's 16M-element limit)."""
    scales: dict[str, float] = {}
    for me in methods:
        vals = torch.cat([maps[(mo, me)].abs().flatten() for mo in models if (mo, me) in maps] or [torch.ones(1)])
        vals = vals[:: -(-vals.numel() // 2 ** 24)]
        scales[me] = float(torch.quantile(vals.double(), 0.995)) if vals.numel() else 1.0
    return scales


def _viewer(out: Path, s: EvalSample, maps: dict[tuple[str, str], torch.Tensor], cells: list[tuple[int, int]],
            scales: dict[str, float], class_names: list[str], task: str) -> str:
    """Write the slice viewer's data (``medxai.pipeline.volumes.viewer_data``) for the first-rank cells of
    the shown volumes; returns its path relative to the run directory."""
    import json

    from medxai._util.io import atomic_write_text
    from medxai.pipeline.volumes import viewer_data

    first = [c for c, (_, r) in enumerate(cells) if r == 0]
    data = viewer_data(s.x, s.masks, s.has_mask, {f"{mo}|{me}": m[first] for (mo, me), m in maps.items()}, scales,
                       s.ids, [_label(s.y[i], class_names, task) for i in range(len(s))])
    path = out / "report_assets" / "viewer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, separators=(",", ":")))
    return _rel(out, path)


def _key_slices(s: EvalSample, maps: dict[tuple[str, str], torch.Tensor],
                cells: list[tuple[int, int]]) -> tuple[EvalSample, dict[tuple[str, str], torch.Tensor]]:
    """Volumes as their key axial slices (``medxai.pipeline.volumes.axial_slices``), the maps cut alike."""
    from medxai.pipeline.volumes import axial_slices

    sl = axial_slices(s)
    ks = sl.extra["slices"]
    return sl, {k: torch.stack([m[c][:, ks[i]] for c, (i, _) in enumerate(cells)]) for k, m in maps.items()}


def _target_rule(cfg: AuditConfig, task: str) -> str:
    """The rule the explain stage used (``medxai.pipeline.explanations.explanation_targets``)."""
    label = cfg.explain.target == "label" and task != "multilabel" and cfg.explain.top_k is None
    return "label" if label else "pred"


def _cell_maps(m: torch.Tensor, cells: list[tuple[int, int]], spatial: int = 2) -> torch.Tensor:
    """(cells, 1, H, W) (or (cells, 1, D, H, W)): the map of each (image, rank); (N, 1, H, W) maps have
    rank 0 only."""
    if m.ndim == spatial + 3:
        return torch.stack([m[i, min(r, m.shape[1] - 1)] for i, r in cells])
    return m[[i for i, _ in cells]]


def _cell_findings(targets: torch.Tensor | None, cells: list[tuple[int, int]], class_names: list[str],
                   probs: torch.Tensor | None = None) -> list[dict]:
    """Per cell: the finding the map explains (and its probability when the stage recorded them),
    for top-k every explained finding of its image, and the image's most probable class."""
    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    if targets is None:  # a stage written before targets were saved
        return [{"explains": "not recorded", "all": []} for _ in cells]
    t = targets.long()
    out = []
    for i, r in cells:
        classes = [int(c) for c in t[i].reshape(-1).tolist()]
        c = classes[min(r, len(classes) - 1)]
        cell = {"explains": name(c), "all": [name(k) for k in classes], "rank": r + 1}
        if probs is not None and i < len(probs):
            cell["p"] = float(probs[i, c])
            cell["top"], cell["p_top"] = name(int(probs[i].argmax())), float(probs[i].max())
        out.append(cell)
    return out


def _caption(f: dict, rule: str, task: str) -> str:
    """What one overlay shows, in words: the prediction (with its probability where the stage
    recorded them), then the finding the map explains."""
    p = f" (p {f['p']:.2f})" if "p" in f else ""
    if rule == "label" or not f["all"]:
        if "top" in f:
            return f"predicted: {f['top']} (p {f['p_top']:.2f}) · explains: {f['explains']} (the label){p}"
        return f"explains: {f['explains']}" + (" (the label; prediction not recorded)" if f["all"] else "")
    if len(f["all"]) > 1:
        return (f"top-{len(f['all'])} most probable: {', '.join(f['all'])} · explains: {f['explains']} "
                f"(rank {f['rank']}){p}")
    kind = "most probable" if task == "multilabel" else "predicted"
    return f"{kind}: {f['explains']}{p} · explains: {f['explains']}"


def _score_rows(scores: dict[tuple[str, str], StageResult]) -> tuple[list[dict], dict[str, bool]]:
    """Long-format per-sample values (None -> NaN) and each metric's ``higher_is_better``."""
    rows = []
    meta: dict[str, bool] = {}
    for (mo, me), st in scores.items():
        for metric, info in st.result.get("metrics", {}).items():
            meta[metric] = bool(info.get("higher_is_better", True))
            for sid, v in zip(st.result["ids"], info["values"], strict=True):
                rows.append({"model": mo, "method": me, "metric": metric, "id": sid,
                             "value": float("nan") if v is None else float(v)})
    return rows, meta


def _score_summary(cfg: AuditConfig, rows: list[dict], meta: dict[str, bool]) -> list[dict]:
    """Per model, method and metric: the mean with a bootstrap CI and why values are NaN."""
    from medxai.metrics import nan_reason, summarize

    if not rows:
        return []
    import pandas as pd

    summary = summarize(pd.DataFrame(rows), by=("model", "method", "metric"), n_boot=cfg.score.n_boot, seed=cfg.seed)
    for s in summary:
        s["higher_is_better"] = meta.get(s["metric"], True)
        s["nan_reason"] = nan_reason(s["metric"]) if s["n_nan"] else None
    return list(summary)


def _comparisons(cfg: AuditConfig, by_key: dict, meta: dict[str, bool], models: list[str],
                 methods: list[str]) -> list[dict]:
    """Paired comparisons on shared images, for ``score.compare`` (default: second model vs first)."""
    from medxai.metrics import compare

    out = []
    pairs = cfg.score.compare or ([[models[1], models[0]]] if len(models) >= 2 else [])
    for a, b in pairs:
        for me in methods:
            for metric in meta:
                va, vb = by_key.get((a, me, metric)), by_key.get((b, me, metric))
                if not va or not vb:
                    continue
                ids = [i for i in va if i in vb]
                c = compare(np.array([va[i] for i in ids], dtype=float), np.array([vb[i] for i in ids], dtype=float),
                            n_boot=cfg.score.n_boot, seed=cfg.seed)
                row = {"metric": metric, "method": me, "a": a, "b": b, **c}
                if not c["n"]:
                    row["reason"] = _no_pairs_reason(va, vb, ids, a, b)
                out.append(row)
    return out


def _no_pairs_reason(va: dict, vb: dict, ids: list, a: str, b: str) -> str:
    """Why a paired comparison has no pair: no shared image, or no image with a value for both."""
    if not ids:
        return f"{a} and {b} were scored on no common image"
    only_a = sum(1 for i in ids if _ok(va[i]) and not _ok(vb[i]))
    only_b = sum(1 for i in ids if _ok(vb[i]) and not _ok(va[i]))
    neither = len(ids) - only_a - only_b
    return (f"no image has a value for both: of {len(ids)} shared images, {neither} with no value for either "
            f"model, {only_a} with a value only for {a}, {only_b} only for {b} (the metric is undefined there, "
            "e.g. no lesion mask)")


def _label(y: torch.Tensor, class_names: list[str], task: str) -> str:
    if task == "multilabel":
        pos = [class_names[i] for i, v in enumerate(y.tolist()) if v == v and v >= 0.5]
        return ", ".join(pos) or "no finding"
    return class_names[int(y)]


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def findings(report: dict, by_key: dict, models: list[str], methods: list[str], task: str,
             cfg: AuditConfig) -> list[dict]:
    """Headline findings in plain words, each with the numbers it states (from report.json)."""
    out: list[dict] = []
    metric = headline(task)
    chance = {m for m, sc in report.get("scorecard", {}).get("models", {}).items() if sc["at_chance"]}
    for m in chance:
        row = report["scorecard"]["models"][m]["rows"][0]
        out.append({"kind": "at_chance", "model": m,
                    "text": f"{m} model is at chance ({row['reason']}): its robustness, calibration and explanation "
                            "numbers are not meaningful and are not judged."})
    for u in report["explanations"].get("unavailable", []):
        out.append({"kind": "unavailable", **u, "text": f"{u['model']} model: {u['reason']}."})
    for name, m in report["models"].items():
        e = m["metrics"].get(metric)
        if e and _ok(e.get("value")):
            ci = f" (95% CI {e['ci_low']:.2f}-{e['ci_high']:.2f})" if _ok(e.get("ci_low")) else ""
            out.append({"kind": "accuracy", "model": name, "metric": metric, "value": e["value"],
                        "text": f"{name} model: {metric.replace('_', ' ')} {e['value']:.2f}{ci} on the "
                                f"{cfg.data.split} split."})
    if len(models) >= 2 and "energy_pointing_game" in {k[2] for k in by_key}:
        a, b = models[1], models[0]
        for me in methods:
            va, vb = by_key.get((a, me, "energy_pointing_game")), by_key.get((b, me, "energy_pointing_game"))
            if not va or not vb:
                continue
            ids = [i for i in va if i in vb and _ok(va[i]) and _ok(vb[i])]
            if len(ids) < 5:
                continue
            r, lo, hi = _paired_ratio(np.array([va[i] for i in ids]), np.array([vb[i] for i in ids]),
                                      cfg.score.n_boot, cfg.seed)
            out.append({"kind": "localisation", "method": me, "a": a, "b": b, "ratio": r, "ci_low": lo, "ci_high": hi,
                        "n": len(ids),
                        "text": f"{a} model: {r:.2f}x {'more' if r >= 1 else 'as much'} {me} attribution inside "
                                f"lesions than {b} (95% CI {lo:.2f}-{hi:.2f}, {len(ids)} images with lesions)."})
            break
    sc = report.get("shortcut", {}).get("rows", [])
    for s in sc:
        if s["method"] == methods[0] and _ok(s.get("peak_rate")):
            out.append({"kind": "shortcut", "model": s["model"], "method": s["method"], "peak_rate": s["peak_rate"],
                        "share": s["share"],
                        "text": f"{s['model']} model's {s['method']} maps peak on the laterality marker in "
                                f"{100 * s['peak_rate']:.0f}% of test images that carry it "
                                f"({100 * s['share']:.0f}% of positive attribution lies on it)."})
    att = report["robustness"].get("attack")
    # a success rate over no correctly classified image is 0 by construction, not robustness: left out
    judged = {n: a for n, a in (att or {}).get("models", {}).items() if n not in chance and a.get("n") != 0}
    if att and len(att["eps"]) > 1 and judged:
        i = len(att["eps"]) - 1
        parts = [f"{n} {100 * a['success_rate'][i]:.0f}%" for n, a in judged.items()]
        out.append({"kind": "robustness", "eps": att["eps"][i],
                    "success_rate": {n: a["success_rate"][i] for n, a in judged.items()},
                    "text": f"Attack success rate at eps {att['eps_labels'][i]} ({att['norm']}): "
                            + ", ".join(parts) + "."})
    cor = report["robustness"].get("corruption")
    if cor and set(cor["models"]) - chance:
        parts = [f"{n} {c['mean_drop']:+.3f}" for n, c in cor["models"].items()
                 if _ok(c.get("mean_drop")) and n not in chance]
        out.append({"kind": "corruption", "mean_drop": {n: c["mean_drop"] for n, c in cor["models"].items()},
                    "text": f"Mean drop in {cor['metric'].replace('_', ' ')} under corruptions: "
                            + ", ".join(parts) + "."})
    judged = [s for s in report.get("sanity", []) if s["model"] not in chance and s.get("passes") is not None]
    fails = [f"{s['model']}/{s['method']}" for s in judged if not s.get("passes", True)]
    if judged:
        out.append({"kind": "sanity", "fails": fails,
                    "text": ("Sanity check failed (maps barely change when the model is randomised): "
                             + ", ".join(fails)
                             if fails else "All explained methods pass the model-randomisation sanity check.")})
    return out
