"""The registry of metrics by name (``medxai.metrics.METRICS``) with each metric's metadata.

Every public metric function is registered with ``@metric(...)``: its category, whether higher
is better, what it needs (mask or boxes, the model and images, an explainer, a shortcut mask),
the paper it implements, and an adapter ``score(ctx)`` that turns a :class:`ScoreContext` into
named per-sample columns, so the CLI and the pipeline can run any metric by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medxai._util.registry import Registry
from medxai.errors import ConfigError

CATEGORIES = ("localisation", "faithfulness", "randomisation", "complexity", "shortcut", "robustness")
#: what a metric can need; "mask" is satisfied by a mask or by boxes when ``boxes_ok``
NEEDS = ("mask", "boxes", "model", "images", "explainer", "shortcut_mask")


@dataclass
class ScoreContext:
    """Everything a metric may use for one batch of maps of one method and one model.

    maps: (B, H, W) float; images: (B, C, H, W) in [0, 1]; masks: (B, H, W) bool; boxes: (B, 4);
    shortcut_masks: (B, H, W) bool; targets: (B,) class explained; model: the classifier;
    explainer: callable (model, x, target) -> maps (for randomisation); options: per-metric
    keyword arguments by metric name.
    """

    maps: torch.Tensor
    images: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    shortcut_masks: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    model: nn.Module | None = None
    explainer: Callable[..., torch.Tensor] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def annotation(self) -> torch.Tensor:
        """The mask if there is one, else the boxes."""
        if self.masks is not None:
            return self.masks
        if self.boxes is not None:
            return self.boxes
        raise ConfigError("this metric needs a mask or boxes, and the data has neither")

    def opts(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))


@dataclass(frozen=True)
class MetricInfo:
    """A metric's function and metadata (the Quantus idea, without its loops)."""

    name: str
    fn: Callable[..., Any]
    category: str
    higher_is_better: bool
    needs: frozenset[str]
    reference: str
    boxes_ok: bool = False
    columns: tuple[str, ...] = ()
    score: Callable[[Callable[..., Any], ScoreContext], dict[str, torch.Tensor]] | None = None

    def compute(self, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        """Per-sample columns {column name: (B,) tensor} for one batch."""
        reason = self.available(ctx)
        if reason is not None:
            raise ConfigError(f"metric {self.name!r} {reason}")
        if self.score is None:
            raise ConfigError(f"metric {self.name!r} cannot be run by name")
        return self.score(self.fn, ctx)

    def available(self, ctx: ScoreContext) -> str | None:
        """None if ``ctx`` has what the metric needs, else the reason it cannot run."""
        for need in self.needs:
            if need == "mask":
                if ctx.masks is None and not (self.boxes_ok and ctx.boxes is not None):
                    return "needs a lesion mask" + (" or boxes" if self.boxes_ok else "")
            elif need == "model" and ctx.model is None:
                return "needs the model (--run)"
            elif need == "images" and ctx.images is None:
                return "needs the images"
            elif need == "explainer" and ctx.explainer is None:
                return "needs an explainer"
            elif need == "shortcut_mask" and ctx.shortcut_masks is None:
                return "needs shortcut masks"
        return None


METRICS: Registry[MetricInfo] = Registry("metric")


def metric(
    name: str,
    *,
    category: str,
    higher_is_better: bool,
    needs: tuple[str, ...] = (),
    reference: str,
    boxes_ok: bool = False,
    columns: tuple[str, ...] | None = None,
    score: Callable[[Callable[..., Any], ScoreContext], dict[str, torch.Tensor]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a metric function under ``name`` with its metadata; sets ``fn.info``."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; known: {NEEDS}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = MetricInfo(name=name, fn=fn, category=category, higher_is_better=higher_is_better,
                          needs=frozenset(needs), reference=reference, boxes_ok=boxes_ok,
                          columns=columns or (name,), score=score)
        METRICS.add(name, info)
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return deco


def on_annotation(fn: Callable[..., Any], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Adapter: ``fn(maps, mask_or_boxes, **options)`` -> one column named after the metric."""
    name = fn.info.name  # type: ignore[attr-defined]
    return {name: fn(ctx.maps, ctx.annotation(), **ctx.opts(name))}


def on_maps(fn: Callable[..., Any], ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """Adapter: ``fn(maps, **options)`` -> one column named after the metric."""
    name = fn.info.name  # type: ignore[attr-defined]
    return {name: fn(ctx.maps, **ctx.opts(name))}


#: short names accepted wherever a metric is named (CLI, configs)
ALIASES = {
    "energy": "energy_pointing_game",
    "rank": "relevance_rank_accuracy",
    "mass": "relevance_mass_accuracy",
    "auroc": "mask_auroc",
    "aopc": "region_perturbation",
    "gini": "sparseness",
    "entropy": "complexity",
    "tv": "total_variation",
    "mprt": "model_randomisation",
    "shortcut": "shortcut_share",
    "emprt": "efficient_mprt",
    "smprt": "smooth_mprt",
    "ris": "relative_input_stability",
    "ros": "relative_output_stability",
    "lipschitz": "local_lipschitz_estimate",
    "sensitivity": "max_sensitivity",
}


def resolve(name: str) -> MetricInfo:
    """The metric registered as ``name`` or one of its ALIASES; unknown names list the known ones."""
    return METRICS.get(ALIASES.get(name, name))


#: Why a metric's per-sample value can be NaN (the package's NaN policy, per metric).
NAN_REASONS: dict[str, str] = {
    "pointing_game": "no annotation for the image (empty mask): nothing to point at",
    "energy_pointing_game": "empty mask, or the map has no positive attribution (0/0)",
    "relevance_mass_accuracy": "empty mask, or the map has no positive attribution (0/0)",
    "relevance_rank_accuracy": "empty mask (no top-K with K = 0)",
    "mask_auroc": "empty mask, or a mask covering the whole image (one class only: AUROC undefined)",
    "topk_iou": "empty mask / no annotation box",
    "mask_iou": "empty mask",
    "complexity": "an all-zero map (no distribution to take the entropy of)",
    "shortcut_share": "the image carries no shortcut marker, or the map has no positive attribution",
    "model_randomisation": "a constant map (rank correlation undefined)",
    "faithfulness_correlation": "the output drops or the subset attribution sums are constant over the runs "
                                "(Pearson undefined), e.g. the baseline equals the image",
    "monotonicity_correlation": "the group attributions or output variances are constant (Spearman undefined)",
    "irof": "the clean output of the target is 0 (curve f(x^k) / f(x) undefined; logit output only)",
    "sufficiency": "no reference map within the distance threshold (Quantus returns 0)",
    "smooth_mprt": "a constant smoothed map (rank correlation undefined)",
    "efficient_mprt": "the original map is constant (zero histogram entropy: relative rise undefined)",
    "focus": "the batch has no partner images for the sample's mosaic, or the mosaic map has no positive relevance",
    "max_sensitivity": "normalise=True and the clean explanation is all zero (relative change undefined)",
    "avg_sensitivity": "normalise=True and the clean explanation is all zero (relative change undefined)",
    "local_lipschitz_estimate": "a given perturbation equal to zero (||x - x'|| = 0: 0/0)",
    "relative_input_stability": "no perturbation kept the predicted class (all discarded, Agarwal et al. 2022)",
    "relative_output_stability": "no perturbation kept the predicted class (all discarded, Agarwal et al. 2022)",
    "infidelity": "normalise=True and I . Phi = 0 for every perturbation (an all-zero map: beta undefined)",
}


def nan_reason(column: str) -> str | None:
    """Why values of a metric column (``"energy_pointing_game"``, ``"topk_iou@10"``, ``"shortcut_max"``)
    can be NaN, or None if the metric is defined for every valid input."""
    for name in METRICS.names():
        info = METRICS.get(name)
        if column == name or column in info.columns or column.startswith(name + "@"):
            return NAN_REASONS.get(name)
    return None
