"""RISE: equals a hand loop over the same masks; the masks follow Petsiuk's generator; top_k;
seeding; no side effects."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medxai.explain import REGISTRY, RISE, rise_masks


def _cnn(k: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                         nn.Linear(54, k)).eval()


@pytest.mark.parametrize(("size", "batch_size"), [((16, 16), 7), ((13, 18), None)])
def test_equals_hand_loop(size, batch_size):
    model = _cnn()
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size)
    target = torch.tensor([1, 3])
    n, p = 50, 0.5
    ours = RISE(model, n_masks=n, s=4, p=p, seed=3, batch_size=batch_size).attribute(x, target)
    masks = rise_masks(n, size, s=4, p=p, seed=3)
    expect = torch.zeros(2, 1, *size)
    with torch.no_grad():
        for b in range(2):
            for m in masks:
                prob = torch.softmax(model(x[b:b + 1] * m), -1)[0, target[b]]
                expect[b, 0] += prob * m
    expect /= n * p
    torch.testing.assert_close(ours, expect, atol=1e-5, rtol=1e-5)


def test_masks_follow_petsiuk():
    size, s, p = (20, 20), 4, 0.3
    masks = rise_masks(500, size, s=s, p=p, seed=0)
    assert masks.shape == (500, 20, 20) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    # each mask is a crop of a bilinearly upsampled binary grid: reconstruct one from its grid
    cell = math.ceil(20 / s)
    found = 0
    g = torch.Generator().manual_seed(0)
    grids = (torch.rand(500, 1, s, s, generator=g) < p).float()
    dy = torch.randint(0, cell, (500,), generator=g)
    dx = torch.randint(0, cell, (500,), generator=g)
    up = F.interpolate(grids, size=((s + 1) * cell,) * 2, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    for i in range(500):
        found += torch.equal(masks[i], up[i, dy[i]:dy[i] + 20, dx[i]:dx[i] + 20])
    assert found == 500
    assert abs(grids.mean().item() - p) < 0.02  # cells on with probability p
    assert abs(masks.mean().item() - p) < 0.03
    assert torch.equal(rise_masks(500, size, s=s, p=p, seed=0), masks)
    assert not torch.equal(rise_masks(500, size, s=s, p=p, seed=1), masks)


def test_region_model_lights_up_its_region():
    class Region(nn.Module):
        def forward(self, x):
            r = x[:, :, 4:10, 10:16].mean((1, 2, 3))
            return torch.stack([torch.zeros_like(r), 6 * r], 1)

    x = torch.full((1, 3, 20, 20), 0.8)
    sal = RISE(Region(), n_masks=600, s=5, seed=0).attribute(x, 1)[0, 0]
    inside = sal[4:10, 10:16].mean()
    outside = torch.cat([sal[12:].flatten(), sal[:, :6].flatten()]).mean()
    assert inside > outside + 0.05


def test_topk_equals_single_calls():
    model = _cnn(k=6)
    x = torch.rand(2, 3, 12, 12)
    rise = RISE(model, n_masks=40, s=3, output="sigmoid")
    multi = rise.attribute(x, top_k=3)
    order = torch.sort(model(x).detach(), dim=-1, descending=True, stable=True).indices[:, :3]
    for j in range(3):
        torch.testing.assert_close(multi[:, j], rise.attribute(x, order[:, j]), atol=1e-6, rtol=1e-5)
    assert REGISTRY.get("rise") is RISE


def test_no_side_effects_when_model_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.bn, self.calls = _cnn(), nn.BatchNorm2d(3), 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("midway")
            return self.inner(self.bn(x))

    model = Boom().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="midway"):
        RISE(model, n_masks=30, batch_size=5).attribute(torch.rand(1, 3, 8, 8), 0)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
