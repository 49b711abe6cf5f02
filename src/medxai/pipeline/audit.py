"""``medxai audit``: data -> models -> evaluation -> attacks -> corruptions -> explanations ->
scores, sanity checks, shortcut analysis -> report, each a cached stage of the run directory.

A stage's key hashes its own config and the keys of the stages it reads, so a rerun reuses
everything and changing one explainer recomputes only that explainer's maps and scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai._util.io import atomic_write_json
from medxai._util.seed import seed_everything
from medxai.pipeline.cache import StageResult, StageRunner, stage_key
from medxai.pipeline.config import AuditConfig
from medxai.pipeline.data import build_datasets, eval_sample

__all__ = ["AuditResult", "run_audit"]


@dataclass
class AuditResult:
    out: Path
    report_html: Path
    report: dict
    findings: list[dict]
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _load_model(stage: StageResult) -> torch.nn.Module:
    from medxai.runs import load_run

    model, _ = load_run(stage.dir / "run")
    return model.eval()


def run_audit(cfg: AuditConfig, out: str | Path, *, synthetic: bool | None = None, force: set[str] | None = None,
              log: Callable[[str], None] | None = None, progress: Any = None) -> AuditResult:
    """Run (or resume) the whole audit into ``out``; returns the report and findings."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda m: None)
    runner = StageRunner(out, force=force, log=say)
    seed_everything(cfg.seed)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))

    # -- data ---------------------------------------------------------------------------------
    datasets, data_desc = build_datasets(cfg.data, synthetic=synthetic)
    data_parts = {"data": cfg.data.model_dump(mode="json"), "synthetic": synthetic}
    data_key = stage_key(data_parts)
    task, class_names = data_desc["task"], data_desc["class_names"]
    n_eval = max(cfg.attack.n if cfg.attack.enabled else 0, cfg.corruption.n if cfg.corruption.enabled else 0,
                 cfg.explain.n_score, cfg.explain.n_show)
    sample = eval_sample(datasets["test"], n_eval)

    def data_stage(d: Path) -> dict:
        from medxai.pipeline.figures import data_examples

        data_examples(sample.subset(8), class_names, task, d / "examples.png")
        return {**data_desc, "examples": "examples.png"}

    data_st = runner.run("data", data_parts, data_stage)

    # -- models -------------------------------------------------------------------------------
    model_stages: dict[str, StageResult] = {}
    evals: dict[str, dict] = {}
    for mc in cfg.models:
        parts = {"data": data_key, "model": mc.model_dump(mode="json"), "seed": cfg.seed,
                 "init_from": model_stages[mc.init_from].key if mc.init_from else None}

        def train_stage(d: Path, mc=mc) -> dict:
            from medxai.models import create, freeze
            from medxai.train import fit

            in_chans = int(sample.x.shape[1])
            if mc.init is not None:  # the ViT study's initialisations, from local files
                from medxai.models.vit_presets import init_vit

                model = create(mc.arch, len(class_names), in_chans=in_chans, **mc.options)
                init_vit(model, mc.init, mc.pretrained)
            else:
                model = create(mc.arch, len(class_names), in_chans=in_chans, pretrained=mc.pretrained, **mc.options)
            if mc.init_from:
                src = _load_model(model_stages[mc.init_from])
                model.load_state_dict(src.state_dict())
            if mc.freeze is not None:
                freeze(model, **(mc.freeze if isinstance(mc.freeze, dict) else {"until": mc.freeze}))
            preset = {}
            if mc.preset:
                from medxai.models.vit_presets import vit_preset

                preset = vit_preset(*mc.preset.split("/"))
            train_cfg = {"seed": cfg.seed, "task": task, **preset, **mc.train}
            res = fit(model, datasets["train"], datasets["val"], train_cfg, run_dir=d / "run",
                      meta={"class_names": class_names})
            return {"arch": mc.arch, "objective": (mc.train.get("objective") or {}).get("name", "standard"),
                    "epochs_run": res.epochs_run, "best_epoch": res.best_epoch, "seconds": res.train_time_s}

        model_stages[mc.name] = runner.run(f"train/{mc.name}", parts, train_stage)

        def eval_stage(d: Path, mc=mc) -> dict:
            from medxai.evaluate import classification, predict

            model = _load_model(model_stages[mc.name])
            ids, y_true, scores = predict(model, datasets["test"], batch_size=128)
            n_boot = int(cfg.evaluation.get("n_boot", 1000))
            metrics = classification(y_true, scores, task, class_names=class_names, n_boot=n_boot, seed=cfg.seed)
            return {"metrics": metrics, "n": len(ids)}

        evals[mc.name] = runner.run(f"evaluate/{mc.name}", {"train": model_stages[mc.name].key,
                                                             "eval": cfg.evaluation}, eval_stage).result

    # -- robustness ---------------------------------------------------------------------------
    attacks: dict[str, dict] = {}
    corruptions: dict[str, dict] = {}
    for name, st in model_stages.items():
        if cfg.attack.enabled:
            def attack_stage(d: Path, st=st) -> dict:
                from medxai.attacks import evaluate as attack_eval

                model = _load_model(st)
                s = sample.subset(cfg.attack.n)
                return attack_eval(model, (s.x, s.y), eps_list=cfg.attack.eps, norm=cfg.attack.norm,
                                   steps=cfg.attack.steps, task=task)

            attacks[name] = runner.run(f"attack/{name}", {"train": st.key, "attack": cfg.attack.model_dump(),
                                                          "data": data_key}, attack_stage).result
        if cfg.corruption.enabled:
            def corruption_stage(d: Path, st=st) -> dict:
                from medxai.pipeline.robustness import corruption_table

                return corruption_table(_load_model(st), sample.subset(cfg.corruption.n), task, class_names,
                                        cfg.corruption.names, cfg.corruption.severities, seed=cfg.seed)

            corruptions[name] = runner.run(f"corrupt/{name}", {"train": st.key, "data": data_key,
                                                               "corruption": cfg.corruption.model_dump()},
                                           corruption_stage).result
    gallery = None
    if cfg.corruption.enabled and cfg.corruption.gallery:
        def gallery_stage(d: Path) -> dict:
            from medxai.corruptions import gallery as corruption_gallery

            corruption_gallery(sample.subset(1).x, d / "gallery.png", cfg.corruption.names,
                               cfg.corruption.severities, seed=cfg.seed)
            return {"png": "gallery.png"}

        gallery = runner.run("corrupt/gallery", {"data": data_key, "c": cfg.corruption.model_dump()}, gallery_stage)

    # -- explanations and scores --------------------------------------------------------------
    explained: dict[tuple[str, str], StageResult] = {}
    scores: dict[tuple[str, str], StageResult] = {}
    from medxai.pipeline.explanations import explain_stage, sanity_stage, score_stage

    x_sample = sample.subset(max(cfg.explain.n_score, cfg.explain.n_show))
    for name, st in model_stages.items():
        for method in cfg.explain.methods:
            opts = cfg.explain.options.get(method, {})
            parts = {"train": st.key, "data": data_key, "method": method, "options": opts,
                     "output": cfg.explain.output, "target": cfg.explain.target, "n": len(x_sample)}
            explained[(name, method)] = ex = runner.run(
                f"explain/{name}/{method}", parts,
                lambda d, st=st, method=method, opts=opts: explain_stage(
                    d, _load_model(st), x_sample, method, opts, cfg.explain, task))
            scores[(name, method)] = runner.run(
                f"score/{name}/{method}", {"explain": ex.key, "score": cfg.score.model_dump()},
                lambda d, st=st, ex=ex: score_stage(d, _load_model(st), x_sample, ex, cfg.score, task))
    sanity: list[dict] = []
    if cfg.score.sanity:
        for name, st in model_stages.items():
            for method in cfg.score.sanity_methods or cfg.explain.methods[:1]:
                opts = cfg.explain.options.get(method, {})
                res = runner.run(f"sanity/{name}/{method}",
                                 {"train": st.key, "data": data_key, "method": method, "opts": opts,
                                  "n": cfg.score.sanity_n, "output": cfg.explain.output,
                                  "granularity": cfg.score.sanity_granularity},
                                 lambda d, st=st, method=method, opts=opts: sanity_stage(
                                     d, _load_model(st), sample.subset(cfg.score.sanity_n), method, opts,
                                     cfg.explain, task, seed=cfg.seed, granularity=cfg.score.sanity_granularity))
                sanity.append({"model": name, "method": method, **res.result})

    # -- report -------------------------------------------------------------------------------
    from medxai.pipeline.report_data import assemble_report

    report = assemble_report(cfg, out, data_st, model_stages, evals, attacks, corruptions, gallery,
                             explained, scores, sanity, sample=x_sample, class_names=class_names, task=task)
    atomic_write_json(out / "report.json", report)
    from medxai.report import build_report

    html = build_report(out)
    return AuditResult(out, html, report, report["findings"], runner.events, time.perf_counter() - t0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
