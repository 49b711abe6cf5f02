"""Scoring explanations: localisation, faithfulness, randomisation, complexity, shortcuts, statistics.

Every metric is a function over a batch returning per-sample tensors (never normalising across
the batch, never modifying its inputs), registered by name in ``METRICS`` with its metadata
(category, higher_is_better, needs, reference) and an adapter for running it by name on a
``ScoreContext``. Definitions: ``shared/reference/definitions.md`` section 2.

Policies, everywhere:
- Ties (argmax, top-k, pixel and patch orders) go to the lowest flat (row-major) index: stable
  sorts; LeRF orders ascending with the same rule.
- NaN: a map with NaN/Inf is refused (InputError). An empty mask gives NaN (never True or 1);
  so does a ratio with a zero denominator (no positive attribution for the energy game, a mask
  covering the whole map for the AUROC, a constant map for Spearman, an all-zero map for the
  entropy). ``summarize`` / ``compare`` drop NaNs and report how many.
- Boxes are x0, y0, x1, y1 in pixel indices with x1, y1 exclusive (half-open, like slicing).
- Per-map normalisation only (sparseness, effective complexity: by the map's own max |a|;
  total variation, mask IoU, SSIM: per-map min-max). Quantus 0.6.0's batch-global
  ``normalise_by_max`` is not reproduced, nor its empty-mask True, its crashing or mis-sliced
  weighted variants, or its 3-channel ROAD crash.
- Random draws (ROAD noise, random patch orders, uniform baselines) come from generators seeded
  per sample, so a sample's score never depends on the rest of the batch.

>>> import torch
>>> from medxai.metrics import pointing_game
>>> maps = torch.tensor([[[0.0, 0.2], [0.9, 0.1]]])
>>> masks = torch.tensor([[[False, False], [True, False]]])
>>> pointing_game(maps, masks)
tensor([1.])
"""

from __future__ import annotations

from medxai.metrics import faithfulness_extra, randomisation_extra, robustness  # noqa: F401  (register)
from medxai.metrics.complexity import complexity, effective_complexity, sparseness, total_variation
from medxai.metrics.faithfulness import (
    CurveResult,
    RoadResult,
    deletion,
    insertion,
    pixel_flipping,
    region_perturbation,
    rise_blur,
    road,
)
from medxai.metrics.imputation import linear_imputation, noisy_linear_imputation
from medxai.metrics.localisation import (
    energy_pointing_game,
    mask_auroc,
    mask_iou,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    topk_iou,
)
from medxai.metrics.randomisation import RandomisationResult, model_randomisation, spearman, ssim
from medxai.metrics.registry import (
    ALIASES,
    CATEGORIES,
    METRICS,
    NAN_REASONS,
    MetricInfo,
    ScoreContext,
    nan_reason,
    resolve,
)
from medxai.metrics.scoring import (
    DEFAULT_METRICS,
    NO_MASK,
    SampleScores,
    metric_infos,
    score_samples,
    select_masks,
)
from medxai.metrics.shortcut import ShortcutScore, shortcut_share
from medxai.metrics.statistics import bootstrap_ci, compare, summarize

__all__ = [
    "ALIASES",
    "CATEGORIES",
    "DEFAULT_METRICS",
    "METRICS",
    "NAN_REASONS",
    "NO_MASK",
    "CurveResult",
    "MetricInfo",
    "RandomisationResult",
    "RoadResult",
    "SampleScores",
    "ScoreContext",
    "ShortcutScore",
    "bootstrap_ci",
    "compare",
    "complexity",
    "deletion",
    "effective_complexity",
    "energy_pointing_game",
    "insertion",
    "linear_imputation",
    "mask_auroc",
    "mask_iou",
    "metric_infos",
    "model_randomisation",
    "nan_reason",
    "noisy_linear_imputation",
    "pixel_flipping",
    "pointing_game",
    "region_perturbation",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "resolve",
    "rise_blur",
    "road",
    "score_samples",
    "select_masks",
    "shortcut_share",
    "sparseness",
    "spearman",
    "ssim",
    "summarize",
    "topk_iou",
    "total_variation",
]
