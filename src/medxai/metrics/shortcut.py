"""Shortcut detection: how much of an explanation sits on a known shortcut (e.g. a laterality marker)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from medxai.metrics.localisation import energy_pointing_game, pointing_game
from medxai.metrics.registry import ScoreContext, metric

__all__ = ["ShortcutScore", "shortcut_share"]


class ShortcutScore(NamedTuple):
    """share: positive attribution on the shortcut / all positive attribution, (B,);
    max_on_shortcut: 1.0 if the map's maximum (lowest flat index on ties) lies on it, (B,).
    Both NaN where the image has no shortcut (empty mask); share NaN for a map with no
    positive value."""

    share: torch.Tensor
    max_on_shortcut: torch.Tensor


def _score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    out = fn(ctx.maps, ctx.shortcut_masks, **ctx.opts("shortcut_share"))
    return {"shortcut_share": out.share, "shortcut_max": out.max_on_shortcut}


@metric("shortcut_share", category="shortcut", higher_is_better=False, needs=("shortcut_mask",),
        reference="Zech et al. 2018 (PLOS Med): the laterality-marker shortcut in pneumonia radiographs",
        columns=("shortcut_share", "shortcut_max"), score=_score)
def shortcut_share(maps: torch.Tensor, shortcut_masks: torch.Tensor, *,
                   targets: torch.Tensor | int | None = None) -> ShortcutScore:
    """Share of positive attribution on the shortcut mask and whether the maximum lies on it.

    maps (B, H, W) / (B, 1, H, W); shortcut_masks (B, H, W) bool (or boxes (B, 4)). Lower is
    better: a model that uses the shortcut puts its explanation on it. Average ``max_on_shortcut``
    over images for "how often the maximum lies on the shortcut".
    """
    return ShortcutScore(energy_pointing_game(maps, shortcut_masks, targets=targets),
                         pointing_game(maps, shortcut_masks, targets=targets))
