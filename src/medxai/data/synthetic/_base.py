"""The in-memory result of a synthetic study generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticStudy:
    """A generated study. Arrays are numpy, shaped for writing to disk and for loaders.

    images: uint8 (N, H, W, C), C = 1 (radiographs) or 3 (fundus, skin).
    labels: int64 (N,) for binary / multiclass / ordinal; for multilabel float32 (N, K) in
        CheXpert's vocabulary 1, 0, -1 (uncertain) and NaN (blank).
    masks: bool (N, H, W) for single-label studies, (N, K, H, W) for multilabel (one per finding);
        the pixels that hold the evidence; empty for normal / grade-0 images.
    class_names: K names; task: "binary" | "multiclass" | "ordinal" | "multilabel".
    ids: stable string ids "<study>-<split>-<index:06d>".
    shortcut_present: bool (N,) and shortcut_masks: bool (N, H, W) when a shortcut was requested.
    extra_masks: named additional masks, e.g. {"evidence": (N, H, W)} for melanoma colour variation.
    """

    study: str
    split: str
    seed: int
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    task: str
    ids: list[str]
    shortcut: float | None = None
    shortcut_present: np.ndarray | None = None
    shortcut_masks: np.ndarray | None = None
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)
