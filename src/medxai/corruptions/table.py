"""The corruption table: a model's task metrics on clean and corrupted copies of a sample.

One function for ``medxai corrupt`` and the audit, so both report the same numbers for the same
model, data, seed and levels. Each (corruption, level) corrupts the whole sample in one call
seeded with ``seed`` (the numbers do not depend on the batch size, which only bounds the model's
batches); drop = clean - corrupted; mean corruption error as in ImageNet-C (Hendrycks &
Dietterich 2019): the mean over corruptions and levels of 1 - headline metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medxai.corruptions.base import apply, max_severity
from medxai.errors import InputError

__all__ = ["CORRUPTION_METRICS", "corruption_table", "headline", "relative_ce"]

#: The task metrics per corruption and level; the first is the headline (heat map, mCE, report).
CORRUPTION_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("balanced_accuracy", "accuracy", "auc"),
    "multiclass": ("balanced_accuracy", "accuracy", "auc_macro"),
    "ordinal": ("kappa_quadratic", "balanced_accuracy", "accuracy"),
    "multilabel": ("auc_macro", "accuracy_macro"),
}


def headline(task: str) -> str:
    """The task's headline metric (a key of ``evaluate.classification(...)["metrics"]``)."""
    return CORRUPTION_METRICS[task][0]


def _scorer(model: nn.Module, y: torch.Tensor, task: str, class_names: Sequence[str],
            batch_size: int) -> Callable[[torch.Tensor], dict[str, float]]:
    from medxai.evaluate.metrics import classification
    from medxai.evaluate.predict import model_device, probabilities

    dev, y_np, metrics = model_device(model), y.cpu().numpy(), CORRUPTION_METRICS[task]

    @torch.no_grad()
    def score(x: torch.Tensor, logits: torch.Tensor | None = None) -> dict[str, float]:
        if logits is None:
            logits = torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu()
                                for i in range(0, len(x), batch_size)])
        m = classification(y_np, probabilities(logits, task).numpy(), task, class_names=list(class_names), n_boot=0)
        return {k: float(m["metrics"][k]) for k in metrics}

    return score


def corruption_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, class_names: Sequence[str],
                     names: Sequence[str], severities: Sequence[int], *, seed: int = 0, batch_size: int = 64,
                     on_step: Callable[[], None] | None = None,
                     clean_logits: torch.Tensor | None = None) -> dict[str, Any]:
    """x (N, C, H, W) in [0, 1], y (N,) or (N, L). Per corruption and level (levels above a
    corruption's maximum are left out): ``{"metrics", "drop"}``; plus ``clean``, ``headline``,
    ``mean_drop`` and ``mean_corruption_error`` (None when no level exists). ``clean_logits`` (N, K):
    the model's logits of ``x`` when already computed (the audit's shared clean forward)."""
    if clean_logits is not None and tuple(clean_logits.shape[:1]) != (len(x),):
        raise InputError(f"clean_logits must have {len(x)} rows (one per image), got {tuple(clean_logits.shape)}")
    score = _scorer(model, y, task, class_names, batch_size)
    clean = score(x, None if clean_logits is None else clean_logits.detach().float().cpu())
    table: dict[str, dict[str, dict]] = {}
    for name in names:
        rows = {}
        for s in (s for s in severities if s <= max_severity(name)):
            vals = score(apply(x, name, s, seed=seed))
            rows[str(s)] = {"metrics": vals, "drop": {k: clean[k] - v for k, v in vals.items()}}
            if on_step is not None:
                on_step()
        table[name] = rows
    head = headline(task)
    cells = [r for rows in table.values() for r in rows.values()]
    return {"task": task, "metrics": list(CORRUPTION_METRICS[task]), "headline": head, "clean": clean,
            "corruptions": table, "seed": seed,
            "mean_corruption_error": float(np.mean([1 - r["metrics"][head] for r in cells])) if cells else None,
            "mean_drop": float(np.mean([r["drop"][head] for r in cells])) if cells else None}


def relative_ce(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """ImageNet-C's relative corruption error of each run against the first: per corruption the
    sum over levels of (1 - headline) over the first run's (None where the first run's is 0), and
    their mean. ``{run: {"ce_vs_first_run": {...}, "mce_vs_first_run": float | None}}``."""
    base = next(iter(results.values()))
    out: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        ce: dict[str, float | None] = {}
        for c, rows in r["corruptions"].items():
            e = sum(1 - v["metrics"][r["headline"]] for v in rows.values())
            e0 = sum(1 - v["metrics"][base["headline"]] for v in base["corruptions"][c].values())
            ce[c] = e / e0 if e0 > 0 else None
        vals = [v for v in ce.values() if v is not None]
        out[name] = {"ce_vs_first_run": ce, "mce_vs_first_run": sum(vals) / len(vals) if vals else None}
    return out
