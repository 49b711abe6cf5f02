"""One path from explanation maps to per-sample scores.

``score_samples`` is what ``medxai score``, ``medxai store score`` and the audit run: maps + masks
+ model + options -> per-sample columns, the metrics skipped (and why) and the samples skipped
(and why). One mask rule (``select_masks``), one ROAD seeding rule (per sample id), one
``DEFAULT_METRICS``.

Mask rule: a (N, 1, H, W) mask is every class's evidence; a (N, K, H, W) mask is indexed by the
explained class (a target outside 0..K-1 has no mask). An image whose selected mask is empty
(or whose ``has_mask`` is False) has no mask: the metrics that need one give NaN for it and
``skipped_samples[metric][id]`` says why (``NO_MASK``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medxai._util.seed import derive_seed
from medxai.errors import ConfigError, DataError
from medxai.metrics.registry import MetricInfo, ScoreContext, resolve

__all__ = ["DEFAULT_METRICS", "NO_MASK", "SampleScores", "metric_infos", "score_samples", "select_masks"]

#: the metrics of ``medxai score`` and ``medxai store score`` when none are named
DEFAULT_METRICS: tuple[str, ...] = ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "mask_auroc",
                                    "sparseness", "total_variation")
#: why a mask-based metric has no value for an image
NO_MASK = "no lesion mask for this image (or its explained class)"


def metric_infos(metrics: Sequence[str | MetricInfo] | str) -> list[MetricInfo]:
    """Registry entries of ``metrics`` (names, aliases or entries; a list or comma-separated),
    deduplicated in order; unknown names fail first, listing the known ones."""
    names = [m.strip() for m in metrics.split(",") if m.strip()] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ConfigError("metrics is empty")
    infos = [n if isinstance(n, MetricInfo) else resolve(n) for n in names]
    return list({i.name: i for i in infos}.values())


def select_masks(masks: torch.Tensor | None, targets: torch.Tensor | None, spatial_dims: int = 2
                 ) -> torch.Tensor | None:
    """(N, H, W) bool evidence mask of each explained class from (N, 1|K, H, W) (or (N, H, W)) masks.

    One channel: that mask for every class. K channels: the target's channel; a target outside
    0..K-1 (or no targets) gives an empty mask, i.e. no mask for that image. Volumes
    (``spatial_dims=3``): (N, 1|K, D, H, W) or (N, D, H, W) -> (N, D, H, W).
    """
    if masks is None:
        return None
    m = masks.bool()
    sd = spatial_dims
    if m.ndim == sd + 1:
        return m
    if m.ndim != sd + 2:
        lay = "(N, K, H, W) or (N, H, W)" if sd == 2 else "(N, K, D, H, W) or (N, D, H, W)"
        raise DataError(None, f"masks must be {lay}, got shape {tuple(m.shape)}")
    if m.shape[1] == 1:
        return m[:, 0]
    if targets is None:
        raise ConfigError("per-class masks need the explained targets")
    t = targets.long().reshape(-1).to(m.device)
    ok = (t >= 0) & (t < m.shape[1])
    return m[torch.arange(m.shape[0], device=m.device), t.clamp(0, m.shape[1] - 1)] & ok.view(-1, *([1] * sd))


@dataclass
class SampleScores:
    """Per-sample scores of one (model, method).

    ids: one per row (``"id#r"`` for rank r of top-k targets); columns: {column: (N,) float64 on
    the CPU, NaN where undefined}; meta: per column its metric, category, higher_is_better and
    reference; skipped: {metric: reason} for metrics that could not run at all;
    skipped_samples: {metric: {id: reason}} for the samples a metric has no value for.
    """

    ids: list[str]
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_samples: dict[str, dict[str, str]] = field(default_factory=dict)


def _squeeze(t: torch.Tensor | None, spatial_dims: int = 2) -> torch.Tensor | None:
    """(N, 1, H, W) -> (N, H, W); volumes stay (N, 1, D, H, W) (the metrics' volume layout)."""
    if spatial_dims == 3:
        return t[:, None] if t is not None and t.ndim == 4 else t
    return t[:, 0] if t is not None and t.ndim == 4 and t.shape[1] == 1 else t


def _flatten_topk(maps: torch.Tensor, targets: torch.Tensor, ids: list[str], per_image: dict[str, Any]
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str], dict[str, Any]]:
    """(N, T) targets: one row per (image, rank), ids ``"id#r"`` (r from 1)."""
    k = targets.shape[1]
    rep = {n: None if v is None else v.repeat_interleave(k, dim=0) for n, v in per_image.items()}
    return maps.flatten(0, 1), targets.flatten(), [f"{i}#{r + 1}" for i in ids for r in range(k)], rep


def score_samples(maps: torch.Tensor, metrics: Sequence[str] | str | Sequence[MetricInfo], *, ids: Sequence[Any],
                  images: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                  has_mask: torch.Tensor | None = None, shortcut_masks: torch.Tensor | None = None,
                  targets: torch.Tensor | None = None, model: nn.Module | None = None,
                  explainer: Callable[..., torch.Tensor] | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None, seed: int | None = 0,
                  batch_size: int | None = None, device: str | torch.device | None = None,
                  spatial_dims: int = 2) -> SampleScores:
    """Score ``maps`` of one (model, method) with ``metrics``, sample by sample.

    maps: (N, H, W) or (N, 1, H, W); with (N, T) ``targets`` (top-k), (N, T, [1,] H, W) and each
    (image, rank) is scored against its class's mask. masks: (N, 1|K, H, W) of all classes (see
    ``select_masks``); has_mask: (N,) False for images without annotation. options: per-metric
    keyword arguments; ROAD's noise is seeded per sample id from ``seed`` unless the options set
    it. batch_size: samples per metric call (default: all). Scores never depend on the batching.
    Volumes (``spatial_dims=3``): maps (N, [1,] D, H, W) (top-k: (N, T, [1,] D, H, W)), masks
    (N, 1|K, D, H, W), images (N, C, D, H, W).
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    infos = metric_infos(metrics)
    ids = [str(i) for i in ids]
    maps = maps.float()
    per_image = {"images": images, "masks": masks, "has_mask": has_mask, "shortcut_masks": shortcut_masks}
    if targets is not None and targets.ndim == 2:
        maps, targets, ids, per_image = _flatten_topk(maps, targets, ids, per_image)
    maps = _squeeze(maps, spatial_dims)
    want = 3 if spatial_dims == 2 else 5
    if maps is None or maps.ndim != want or maps.shape[0] != len(ids):
        raise DataError(None, f"maps of shape {None if maps is None else tuple(maps.shape)} for {len(ids)} ids")
    sel = select_masks(per_image["masks"], targets, spatial_dims)
    no_mask = None
    if sel is not None:
        no_mask = ~sel.flatten(1).any(1)
        if per_image["has_mask"] is not None:
            no_mask |= ~per_image["has_mask"].bool().reshape(-1).to(no_mask.device)
        sel = sel & ~no_mask.view(-1, *([1] * spatial_dims))
    sc = per_image["shortcut_masks"]
    sc = _squeeze(sc) if spatial_dims == 2 else sc
    x = per_image["images"]
    dev = torch.device(device) if device is not None else maps.device
    n = len(ids)
    bs = max(n, 1) if not batch_size else int(batch_size)
    if bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    road_seeds = None if seed is None else [derive_seed(seed, "road", i) for i in ids]
    res = SampleScores(ids=ids)
    parts: dict[str, list[torch.Tensor]] = {}
    for b0 in range(0, n, bs):
        s = slice(b0, min(n, b0 + bs))

        def put(t: torch.Tensor | None, s: slice = s) -> torch.Tensor | None:
            return None if t is None else t[s].to(dev)

        opts = {k: dict(v) for k, v in (options or {}).items()}
        if road_seeds is not None:
            opts.setdefault("road", {}).setdefault("seed", road_seeds[s])
        ctx = ScoreContext(maps=put(maps), images=None if x is None else put(x.float()), masks=put(sel),  # type: ignore[arg-type]
                           shortcut_masks=None if sc is None else put(sc.bool()), targets=put(targets),
                           model=model, explainer=explainer, options=opts)
        for mi in infos:
            if mi.name in res.skipped:
                continue
            reason = mi.available(ctx)
            if reason is not None:
                res.skipped[mi.name] = reason
                continue
            for col, vals in mi.compute(ctx).items():
                res.meta[col] = {"metric": mi.name, "category": mi.category, "higher_is_better": mi.higher_is_better,
                                 "reference": mi.reference}
                parts.setdefault(col, []).append(vals.detach().double().cpu().reshape(vals.shape[0], -1)[:, 0])
    for col, p in parts.items():
        v = torch.cat(p)
        mi = resolve(res.meta[col]["metric"])
        if no_mask is not None and "mask" in mi.needs and no_mask.any():
            v[no_mask.cpu()] = float("nan")
            res.skipped_samples[mi.name] = {ids[j]: NO_MASK for j in no_mask.nonzero().flatten().tolist()}
        res.columns[col] = v
    return res
