"""The audit's explanation stages: maps on the evaluation sample, their scores, sanity checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai._util.io import save_safetensors
from medxai.pipeline.cache import StageResult
from medxai.pipeline.config import ExplainConfig, ScoreConfig
from medxai.pipeline.data import EvalSample

CHUNK = 32  # images per explain call: bounds memory whatever the method


def explanation_targets(model: torch.nn.Module, s: EvalSample, policy: str, task: str) -> torch.Tensor:
    """(N,) class explained per image: the label (single-label tasks, ``policy="label"``) or the
    model's top prediction (default; always for multilabel)."""
    if policy == "label" and task != "multilabel":
        return s.y.long()
    with torch.no_grad():
        logits = torch.cat([model(s.x[i:i + 256]) for i in range(0, len(s), 256)])
    return logits.argmax(1)


def explain_maps(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str,
                 opts: dict[str, Any], output: str) -> torch.Tensor:
    """(N, 1, H, W) maps, explained in chunks of ``CHUNK`` images."""
    from medxai.explain import explain

    kw = dict(opts)
    if output != "logit":
        kw.setdefault("output", output)
    parts = [explain(model, x[i:i + CHUNK], method, targets[i:i + CHUNK], **kw) for i in range(0, len(x), CHUNK)]
    return torch.cat(parts).float()


def explain_stage(d: Path, model: torch.nn.Module, s: EvalSample, method: str, opts: dict[str, Any],
                  ecfg: ExplainConfig, task: str) -> dict:
    t0 = time.perf_counter()
    targets = explanation_targets(model, s, ecfg.target, task)
    maps = explain_maps(model, s.x, targets, method, opts, ecfg.output)
    save_safetensors(d / "maps.safetensors", {"maps": maps, "targets": targets},
                     metadata={"method": method, "output": ecfg.output, "target": ecfg.target})
    return {"method": method, "n": len(s), "ids": s.ids, "output": ecfg.output, "target_policy": ecfg.target,
            "targets": targets.tolist(), "seconds": time.perf_counter() - t0}


def _load_maps(ex: StageResult) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(str(ex.dir / "maps.safetensors"))
    return t["maps"], t["targets"]


def _per_sample(v: torch.Tensor | np.ndarray) -> list[float | None]:
    arr = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, float)
    return [None if not np.isfinite(a) else float(a) for a in arr.reshape(len(arr), -1)[:, 0]]


def _select_masks(masks: torch.Tensor | None, targets: torch.Tensor, task: str) -> torch.Tensor | None:
    """(N, H, W) evidence mask of the explained class: per-class masks are indexed by target."""
    if masks is None:
        return None
    if masks.shape[1] == 1:
        return masks[:, 0]
    return masks[torch.arange(len(masks)), targets.long()]


def score_stage(d: Path, model: torch.nn.Module, s: EvalSample, ex: StageResult, scfg: ScoreConfig,
                task: str) -> dict:
    """Per-sample scores of one (model, method) by every configured metric, plus the shortcut."""
    from medxai.metrics import METRICS, ScoreContext

    maps, targets = _load_maps(ex)
    masks = _select_masks(s.masks, targets, task)
    if masks is not None and s.has_mask is not None:
        masks = masks & s.has_mask[:, None, None]  # images without annotation: empty -> NaN
    ctx = ScoreContext(maps=maps[:, 0], images=s.x, masks=masks, targets=targets, model=model,
                       shortcut_masks=None if s.shortcut_masks is None else s.shortcut_masks[:, 0])
    out: dict[str, Any] = {"ids": s.ids, "metrics": {}, "skipped": {}}
    for name in scfg.metrics:
        info = METRICS.get(name)
        reason = info.available(ctx)
        if reason is not None:
            out["skipped"][name] = reason
            continue
        for col, vals in info.compute(ctx).items():
            out["metrics"][col] = {"values": _per_sample(vals), "higher_is_better": info.higher_is_better,
                                   "category": info.category}
    if scfg.shortcut and ctx.shortcut_masks is not None:
        sc = METRICS.get("shortcut_share").compute(ctx)
        share, peak = sc["shortcut_share"].double(), sc["shortcut_max"].double()
        ok = torch.isfinite(share) & torch.isfinite(peak)
        out["shortcut"] = {"share": float(share[ok].mean()) if ok.any() else None,
                           "peak_rate": float(peak[ok].mean()) if ok.any() else None, "n": int(ok.sum())}
    return out


def sanity_stage(d: Path, model: torch.nn.Module, s: EvalSample, method: str, opts: dict[str, Any],
                 ecfg: ExplainConfig, task: str, seed: int = 0) -> dict:
    """Cascading model-parameter randomisation (Adebayo 2018) of one (model, method)."""
    from medxai.metrics import model_randomisation

    targets = explanation_targets(model, s, ecfg.target, task)
    kw = dict(opts)
    if ecfg.output != "logit":
        kw.setdefault("output", ecfg.output)
    res = model_randomisation(model, method, s.x, targets, order="cascading", seed=seed, explainer_kwargs=kw)
    out = res.to_dict()
    sp = [v for v in out["spearman_abs"] if v is not None]
    ss = [v for v in out["ssim"] if v is not None]
    out.update(final_spearman=sp[-1] if sp else None, final_ssim=ss[-1] if ss else None,
               spearman=out["spearman_abs"])
    return out
