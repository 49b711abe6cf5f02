"""Occlusion: equal to captum's Occlusion, analytic cases, multi-target, no side effects."""

import pytest
import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain import REGISTRY, Occlusion


def _cnn(k: int = 5, c: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, k))


@pytest.mark.parametrize(("size", "window", "stride", "baseline"), [
    ((12, 12), (3, 4, 4), (3, 2, 2), 0.0),       # regular grid, all channels
    ((13, 11), (3, 5, 4), (3, 3, 3), 0.25),      # stride does not divide: last window cut off
    ((10, 10), (1, 3, 3), (1, 2, 2), 0.5),       # per-channel windows
    ((9, 14), (2, 4, 6), (1, 4, 5), 0.0),        # channel windows overlap, odd strides
])
def test_equals_captum(size, window, stride, baseline):
    captum_attr = pytest.importorskip("captum.attr")
    model = _cnn().eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, *size)
    target = torch.tensor([0, 3, 4])
    ours = Occlusion(model, window=window, stride=stride, baseline=baseline, batch_size=17).attribute(x, target)
    theirs = captum_attr.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=stride,
                                                    baselines=baseline, target=target, perturbations_per_eval=7)
    assert ours.shape == theirs.shape == x.shape
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_linear_model_analytic():
    # f(x) = sum(w * x): occluding W to 0 changes f by sum_W w*x; each pixel in n windows.
    torch.manual_seed(2)
    w = torch.randn(1, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1, bias=True))
    model[1].weight.data = w.reshape(1, 64)
    x = torch.rand(2, 1, 8, 8)
    # window 2 stride 2: disjoint windows, attr(p) = sum over its window of w*x
    attr = Occlusion(model, window=2, stride=2).attribute(x, 0)
    wx = (w * x).reshape(2, 1, 4, 2, 4, 2).sum((3, 5))
    expect = wx.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(attr, expect, atol=1e-5, rtol=1e-5)


def test_multi_target_and_default_target():
    model = _cnn(k=6).eval()
    x = torch.rand(2, 3, 12, 12)
    occ = Occlusion(model, window=4, stride=4, output="sigmoid")
    multi = occ.attribute(x, top_k=3)
    order = torch.sort(torch.sigmoid(model(x)).detach(), dim=-1, descending=True, stable=True).indices[:, :3]
    for j in range(3):
        torch.testing.assert_close(multi[:, j], occ.attribute(x, order[:, j]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(occ.attribute(x), occ.attribute(x, order[:, 0]))
    assert REGISTRY.get("occlusion") is Occlusion


def test_bad_windows_refused():
    model = _cnn()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(InputError, match="exceeds"):
        Occlusion(model, window=9).attribute(x, 0)
    with pytest.raises(InputError, match="stride"):
        Occlusion(model, window=3, stride=4).attribute(x, 0)
    with pytest.raises(InputError, match="baseline"):
        Occlusion(model, window=3, baseline=2.0).attribute(x, 0)


class _Boom(nn.Module):
    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("model failed midway")
        return self.inner(x)


def test_no_side_effects_even_when_model_raises():
    model = _Boom(_cnn(), after=2).train()
    model.inner[0].weight.grad = g = torch.zeros_like(model.inner[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="midway"):
        Occlusion(model, window=2, stride=1, batch_size=4).attribute(x, 0)
    assert all(m.training for m in model.modules())
    assert model.inner[0].weight.grad is g
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.calls, model.after = 0, 10**9
    Occlusion(model, window=4, stride=4).attribute(x, 1)
    assert all(m.training for m in model.modules()) and model.inner[0].weight.grad is g
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_layout_and_chunking_do_not_change_the_map():
    model = _cnn().eval()
    x = torch.rand(3, 3, 10, 10)
    ref = Occlusion(model, window=3, stride=2, channels_last=False, batch_size=1000).attribute(x, 1)
    for cl, bs in ((True, 1000), (True, 5), (False, 7)):
        out = Occlusion(model, window=3, stride=2, channels_last=cl, batch_size=bs).attribute(x, 1)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
