"""Shortcut share: the share of positive attribution on a known shortcut and whether the maximum is on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medxai.metrics import METRICS, ScoreContext, shortcut_share


def test_analytic_and_nan():
    maps = torch.zeros(3, 6, 6)
    maps[:, 0, 0] = 3.0  # on the marker
    maps[:, 4, 4] = 1.0  # elsewhere
    maps[:, 5, 5] = -5.0  # negative attribution is ignored
    marker = torch.zeros(3, 6, 6, dtype=torch.bool)
    marker[:2, 0:2, 0:2] = True  # image 2 carries no marker
    out = shortcut_share(maps, marker)
    np.testing.assert_allclose(out.share[:2].numpy(), [0.75, 0.75])
    np.testing.assert_array_equal(out.max_on_shortcut[:2].numpy(), [1.0, 1.0])
    assert torch.isnan(out.share[2]) and torch.isnan(out.max_on_shortcut[2])
    maps[1, 4, 4] = 10.0
    out = shortcut_share(maps, marker)
    assert out.max_on_shortcut[1].item() == 0.0
    assert out.share[1].item() == pytest.approx(3 / 13)


def test_by_name_through_the_registry():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 8, 8, generator=g)
    marker = torch.zeros(4, 8, 8, dtype=torch.bool)
    marker[:, :3, :3] = True
    info = METRICS.get("shortcut_share")
    assert info.category == "shortcut" and not info.higher_is_better
    ctx = ScoreContext(maps=maps)
    assert info.available(ctx) is not None  # needs shortcut masks
    cols = info.compute(ScoreContext(maps=maps, shortcut_masks=marker))
    assert set(cols) == {"shortcut_share", "shortcut_max"}
    want = (maps * marker).flatten(1).sum(1) / maps.flatten(1).sum(1)
    torch.testing.assert_close(cols["shortcut_share"], want)
