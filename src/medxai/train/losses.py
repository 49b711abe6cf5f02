"""Task losses and ordinal heads.

- binary / multiclass / ordinal (``ce``): softmax cross-entropy on K logits (binary uses 2),
  optional class weights and label smoothing (``torch.nn.functional.cross_entropy``).
- ordinal ``cumulative`` / ``regression``: the model is wrapped in ``OrdinalHead`` whose output is
  K class log-probabilities, so the same cross-entropy is their likelihood and every later stage
  (metrics, attacks, explanations) sees K class scores.
- multilabel: sigmoid BCE per label, entries with NaN targets masked out, soft targets in [0, 1]
  accepted (U-Random), mean over the valid entries; ``pos_weight`` for class balance; label
  smoothing pulls targets towards 0.5: ``y (1 - e) + e / 2``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from medxai.errors import ConfigError, InputError
from medxai.models.heads import OrdinalHead

__all__ = ["OrdinalHead", "build_loss", "masked_bce"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_single_targets(y: torch.Tensor, k: int) -> torch.Tensor:
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise InputError("single-label targets must be integer class indices")
        y = y.long()
    if y.ndim != 1:
        raise InputError(f"single-label targets must have shape (B,), got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise InputError(f"targets out of range for {k} classes: min {int(y.min())}, max {int(y.max())}")
    return y


def masked_bce(logits: torch.Tensor, y: torch.Tensor, *, pos_weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean sigmoid BCE over entries with a finite target; NaN targets are ignored.

    logits, y: (B, K); y in [0, 1] (soft targets allowed) or NaN. A batch with no valid entry
    gives a zero loss that still has a graph (so backward works).
    """
    if y.shape != logits.shape:
        raise InputError(f"multilabel targets must have the logits' shape {tuple(logits.shape)}, got {tuple(y.shape)}")
    y = y.to(logits.dtype)
    valid = ~torch.isnan(y)
    yv = torch.where(valid, y, torch.zeros_like(y))
    if bool(((yv < 0) | (yv > 1)).any()):
        raise InputError("multilabel targets must lie in [0, 1] or be NaN (apply an uncertainty policy to -1 first)")
    if label_smoothing:
        yv = yv * (1 - label_smoothing) + 0.5 * label_smoothing
    per = F.binary_cross_entropy_with_logits(logits, yv, reduction="none", pos_weight=pos_weight)
    per = per * valid
    return per.sum() / valid.sum().clamp_min(1)


def build_loss(task: str, num_classes: int, *, class_weights: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> LossFn:
    """The task's loss ``loss_fn(logits (B, K), y) -> scalar``.

    ``class_weights``: (K,) per-class CE weights, or for multilabel the (K,) ``pos_weight``.
    """
    if task == "multilabel":
        return lambda logits, y: masked_bce(logits, y, pos_weight=None if class_weights is None
                                            else class_weights.to(logits.device), label_smoothing=label_smoothing)
    if task not in ("binary", "multiclass", "ordinal"):
        raise ConfigError(f"unknown task {task!r}; known: binary, multiclass, ordinal, multilabel")

    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise InputError(f"the model must output (B, {num_classes}) logits for task {task!r}, "
                             f"got {tuple(logits.shape)}")
        y = _check_single_targets(y, num_classes)
        w = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, y, weight=w, label_smoothing=label_smoothing)

    return ce


def class_weights_from_labels(labels: np.ndarray, task: str, num_classes: int) -> torch.Tensor:
    """Balanced weights: single-label ``n / (K n_k)`` (sklearn's "balanced"; absent classes 0);
    multilabel ``pos_weight_k = n_neg_k / n_pos_k`` over non-NaN entries (soft targets count
    fractionally), 1 where a label has no positives or no negatives."""
    labels = np.asarray(labels)
    if task == "multilabel":
        y = labels.astype(np.float64).reshape(len(labels), -1)
        valid = ~np.isnan(y)
        pos = np.where(valid, y, 0).sum(0)
        neg = np.where(valid, 1 - y, 0).sum(0)
        w = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1e-12), 1.0)
        return torch.tensor(w, dtype=torch.float32)
    counts = np.bincount(labels.astype(np.int64).ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def sample_weights_from_labels(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weights 1 / n_class(sample) for a ``WeightedRandomSampler`` (equal class draws)."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(1.0 / counts[labels], dtype=torch.double)
