"""The audit's explanation stages: maps on the evaluation sample, their scores, sanity checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai._util.io import save_safetensors
from medxai._util.validate import check_logits
from medxai.pipeline.cache import StageResult
from medxai.pipeline.config import ExplainConfig, ScoreConfig
from medxai.pipeline.data import EvalSample

CHUNK = 32  # images per explain call: bounds memory whatever the method


def explanation_targets(model: torch.nn.Module, s: EvalSample, policy: str, task: str,
                        top_k: int | None = None, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Classes explained per image (``medxai.explain.targets``): (N,) the label (single-label tasks,
    ``policy="label"``) or the model's top prediction (default; always for multilabel); (N, k) the k
    most probable outputs in descending order (ties: lower index first) when ``top_k`` is given.

    ``logits``: the sample's (N, K) clean logits (the audit's ``clean`` stage): predictions are read
    from them (the same rule as ``medxai.explain.targets``) instead of a forward of the model."""
    from medxai.explain.targets import explanation_targets as targets_by_rule

    rule = "label" if policy == "label" and task != "multilabel" and top_k is None else "pred"
    if logits is None or rule == "label":
        return targets_by_rule(model, s.x, rule, s.y, top_k=top_k)
    check_logits(logits, len(s))
    if top_k is not None:
        from medxai.explain.base import resolve_targets

        return resolve_targets(logits, None, top_k).to(s.x.device)
    return logits.argmax(-1).to(s.x.device)


def resolve_method(model: torch.nn.Module, name: str, opts: dict[str, Any], output: str) -> tuple[str, dict]:
    """The registry method and its keyword arguments for a configured method.

    ``opts`` may name the registry method (``method: integrated_gradients``) so that one config
    can run a method twice under two names (e.g. IG with a uniform and an adversarial baseline);
    ``baseline: {attack: {eps: 2/255, steps: 5, norm: linf}}`` builds a PGD adversarial baseline.
    """
    kw = dict(opts)
    method = kw.pop("method", name)
    base = kw.get("baseline")
    if isinstance(base, dict) and "attack" in base:
        from medxai.attacks import PGD, parse_eps

        att = dict(base["attack"])
        att["eps"] = parse_eps(att["eps"])
        if att.get("step_size") is not None:
            att["step_size"] = parse_eps(att["step_size"])
        kw["baseline"] = PGD(model, **att)
    if output != "logit":
        kw.setdefault("output", output)
    return method, kw


def reusable_maps(method: str, opts: dict[str, Any]) -> bool:
    """Are a configured method's maps a function of (model, image, target) alone? False for a method that
    takes a ``seed`` (SmoothGrad, LIME, RISE, SHAP, IG's random baselines...) or an attack as its baseline:
    another stage's maps of the same images then stand in for a fresh explanation only when this is True."""
    import inspect

    from medxai.errors import ConfigError
    from medxai.explain import REGISTRY

    kw = dict(opts)
    name = kw.pop("method", method)
    if isinstance(kw.get("baseline"), dict):
        return False
    try:
        cls = REGISTRY.get(name)
    except ConfigError:
        return False
    return "seed" not in inspect.signature(cls).parameters


def _shared_maps(path: Path, targets: torch.Tensor, ndim: int) -> torch.Tensor | None:
    """The first ``len(targets)`` maps of an explain stage's file when they explain ``targets`` (top-1)."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    n = targets.shape[0]
    m, t = saved["maps"][:n], saved["targets"][:n]
    if m.shape[0] != n or m.ndim != ndim or not torch.equal(t.to(targets), targets):
        return None
    return m


def explain_maps(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str,
                 opts: dict[str, Any], output: str) -> torch.Tensor:
    """(N, 1, H, W) maps, or (N, T, 1, H, W) for (N, T) targets, explained in chunks of ``CHUNK``."""
    from medxai.explain import explain

    method, kw = resolve_method(model, method, opts, output)
    parts = [explain(model, x[i:i + CHUNK], method, targets[i:i + CHUNK], **kw) for i in range(0, len(x), CHUNK)]
    return torch.cat(parts).float()


def explain_stage(d: Path, model: torch.nn.Module, s: EvalSample, method: str, opts: dict[str, Any],
                  ecfg: ExplainConfig, task: str, logits: torch.Tensor | None = None) -> dict:
    """Maps of one (model, method) on ``s`` with their targets and probabilities (``maps.safetensors``).

    ``logits``: the sample's (N, K) clean logits; targets and probabilities come from them (no clean
    forward here); without them the model is run on ``s`` for both."""
    t0 = time.perf_counter()
    targets = explanation_targets(model, s, ecfg.target, task, ecfg.top_k, logits=logits)
    maps = explain_maps(model, s.x, targets, method, opts, ecfg.output)
    _check_map_shape(maps, s.x, targets, method)
    probs = _probabilities(model, s.x, task) if logits is None else _to_probs(logits.float().cpu(), task)
    save_safetensors(d / "maps.safetensors", {"maps": maps, "targets": targets, "probs": probs},
                     metadata={"method": method, "output": ecfg.output, "target": ecfg.target})
    return {"method": method, "n": len(s), "ids": s.ids, "output": ecfg.output, "target_policy": ecfg.target,
            "targets": targets.tolist(), "seconds": time.perf_counter() - t0}


def _check_map_shape(maps: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, method: str) -> None:
    """Maps must be (N, [T,] 1, *spatial) of the input's spatial shape (a volume's (D, H, W) kept)."""
    from medxai.errors import ModelError

    spatial = tuple(x.shape[2:])
    lead = (x.shape[0], *targets.shape[1:]) if targets.ndim == 2 else (x.shape[0],)
    if tuple(maps.shape) != (*lead, 1, *spatial):
        raise ModelError(f"{method} returned maps of shape {tuple(maps.shape)} for inputs {tuple(x.shape)}; "
                         f"expected {(*lead, 1, *spatial)}")


@torch.no_grad()
def _probabilities(model: torch.nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    """(N, K) probabilities of the explained images (softmax; sigmoid for multilabel), for the captions."""
    from medxai.evaluate.predict import model_device

    dev = model_device(model)
    z = torch.cat([model(x[i:i + CHUNK].to(dev)).float().cpu() for i in range(0, len(x), CHUNK)])
    return _to_probs(z, task)


def _to_probs(z: torch.Tensor, task: str) -> torch.Tensor:
    """(N, K) logits -> probabilities: sigmoid for multilabel, else softmax over classes."""
    return torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)


def _load_maps(ex: StageResult) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(str(ex.dir / "maps.safetensors"))
    return t["maps"], t["targets"]


def _per_sample(v: torch.Tensor | np.ndarray) -> list[float | None]:
    arr = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, float)
    return [None if not np.isfinite(a) else float(a) for a in arr.reshape(len(arr), -1)[:, 0]]


def score_stage(d: Path, model: torch.nn.Module, s: EvalSample, ex: StageResult, scfg: ScoreConfig,
                task: str, seed: int = 0, method: tuple[str, dict[str, Any], str] | None = None,
                baseline: RandomDeletion | None = None) -> dict:
    """Per-sample scores of one (model, method) by every configured metric, plus the shortcut.

    Scored by ``medxai.metrics.score_samples`` (as ``medxai score`` and ``medxai store score``);
    top-k maps score each (image, rank) against that finding's mask, ids ``"id#rank"``. ``method``
    (name, options, output) is the explainer the maps came from: metrics that re-explain perturbed
    inputs (the explanation-robustness metrics) call it. ``baseline``: the model's shared random-map
    deletion scores (computed once for all its methods; a fresh one when None).
    """
    from medxai.metrics import score_samples

    maps, targets = _load_maps(ex)
    names = list(scfg.metrics)
    if scfg.shortcut and s.shortcut_masks is not None and "shortcut_share" not in names:
        names.append("shortcut_share")
    explainer = None
    if method is not None:
        name, opts, output = method

        def explainer(m: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return explain_maps(m, x, t, name, opts, output)

    kw = {"ids": s.ids, "images": s.x, "masks": s.masks, "has_mask": s.has_mask, "shortcut_masks": s.shortcut_masks,
          "targets": targets, "model": model, "options": scfg.options, "seed": seed, "explainer": explainer}
    if s.volumes:  # the metrics' volume layout: maps (N, 1, D, H, W), masks (N, 1|K, D, H, W)
        kw["spatial_dims"] = 3
    res = _score_each(maps, names, kw) if s.volumes else score_samples(maps, names, **kw)
    out: dict[str, Any] = {"ids": res.ids, "metrics": {}, "skipped": dict(res.skipped),
                           "skipped_samples": res.skipped_samples}
    for col, vals in res.columns.items():
        mname = res.meta[col]["metric"]
        if mname == "shortcut_share" and mname not in scfg.metrics:
            continue
        out["metrics"][col] = {"values": _per_sample(vals), "higher_is_better": res.meta[col]["higher_is_better"],
                               "category": res.meta[col]["category"]}
    if "deletion" in res.columns:  # the scorecard's faithfulness baseline: deletion of seeded random maps
        base = baseline if baseline is not None else RandomDeletion()
        out["random_baseline"] = {"deletion": _per_sample(base(maps, s, targets, model, seed, scfg.options))}
    if scfg.shortcut and "shortcut_share" in res.columns:
        share, peak = res.columns["shortcut_share"], res.columns["shortcut_max"]
        ok = torch.isfinite(share) & torch.isfinite(peak)
        out["shortcut"] = {"share": float(share[ok].mean()) if ok.any() else None,
                           "peak_rate": float(peak[ok].mean()) if ok.any() else None, "n": int(ok.sum())}
    return out


def _score_each(maps: torch.Tensor, names: list[str], kw: dict[str, Any]) -> Any:
    """Volumes: ``score_samples`` metric by metric, a metric that refuses volumes (or fails on them)
    recorded in ``skipped`` with its one-line error instead of stopping the others."""
    from medxai.errors import MedxaiError
    from medxai.metrics import score_samples
    from medxai.metrics.scoring import SampleScores

    res, skipped = None, {}
    for name in names:
        try:
            one = score_samples(maps, [name], **kw)
        except (MedxaiError, ValueError, RuntimeError) as exc:
            skipped[name] = f"not computed on volumes: {' '.join(str(exc).split())}"
            continue
        if res is None:
            res = one
        else:
            res.columns.update(one.columns)
            res.meta.update(one.meta)
            res.skipped.update(one.skipped)
            res.skipped_samples.update(one.skipped_samples)
    res = res if res is not None else SampleScores([str(i) for i in kw["ids"]])  # every metric refused
    res.skipped.update(skipped)
    return res


class RandomDeletion:
    """The scorecard's faithfulness baseline, deletion scores of seeded uniform random maps, computed once
    per (maps' shape, targets, deletion options) and shared by every method of one model: the maps are
    the same draw whatever the method, so a second method's baseline is the first one's numbers."""

    def __init__(self) -> None:
        self._done: dict[tuple, torch.Tensor] = {}

    def __call__(self, maps: torch.Tensor, s: EvalSample, targets: torch.Tensor, model: torch.nn.Module,
                 seed: int, options: dict[str, dict[str, Any]]) -> torch.Tensor:
        key = (tuple(maps.shape), targets.detach().cpu().numpy().tobytes(), str(targets.dtype), seed,
               repr(sorted((options.get("deletion") or {}).items())))
        if key not in self._done:
            self._done[key] = _random_deletion(maps, s, targets, model, seed, options)
        return self._done[key]


def _random_deletion(maps: torch.Tensor, s: EvalSample, targets: torch.Tensor, model: torch.nn.Module,
                     seed: int, options: dict[str, dict[str, Any]]) -> torch.Tensor:
    """Deletion scores of uniform random maps (seeded) of the maps' shape on the same images and targets."""
    from medxai.metrics import score_samples

    gen = torch.Generator().manual_seed(seed + 7919)
    noise = torch.rand(maps.shape, generator=gen, dtype=torch.float32)
    res = score_samples(noise, ["deletion"], ids=s.ids, images=s.x, masks=s.masks, has_mask=s.has_mask,
                        shortcut_masks=None, targets=targets, model=model, options=options, seed=seed,
                        **({"spatial_dims": 3} if s.volumes else {}))
    return res.columns["deletion"]


def sanity_stage(d: Path, model: torch.nn.Module, s: EvalSample, method: str, opts: dict[str, Any],
                 ecfg: ExplainConfig, task: str, seed: int = 0, granularity: str = "block",
                 logits: torch.Tensor | None = None, maps: Path | None = None) -> dict:
    """Cascading model-parameter randomisation (Adebayo 2018) of one (model, method); ``logits``:
    the sample's clean (N, K) logits, for the targets (else the model is run on ``s``). ``maps``: the
    explain stage's ``maps.safetensors`` of a sample whose first rows are ``s``; its maps are the
    unrandomised model's maps when their targets are this check's and the method draws nothing at random
    (``reusable_maps``), else they are recomputed."""
    from medxai.errors import InputError
    from medxai.metrics import model_randomisation

    targets = explanation_targets(model, s, ecfg.target, task, logits=logits)  # top-1: one check per image
    registry_name, kw = resolve_method(model, method, opts, ecfg.output)
    original = _shared_maps(maps, targets, s.x.ndim) if maps is not None and reusable_maps(method, opts) else None
    try:
        res = model_randomisation(model, registry_name, s.x, targets, order="cascading", seed=seed,
                                  explainer_kwargs=kw, granularity=granularity, original=original)
    except InputError as exc:  # e.g. a model without parameters: the check cannot be made; say why
        return {"score": None, "passes": None, "reason": str(exc), "layers": [], "spearman": []}
    out = res.to_dict()
    out["original_maps"] = "explain stage" if original is not None else "computed"
    sp = [v for v in out["spearman_abs"] if v is not None]
    ss = [v for v in out["ssim"] if v is not None]
    out.update(final_spearman=sp[-1] if sp else None, final_ssim=ss[-1] if ss else None,
               spearman=out["spearman_abs"])
    return out
