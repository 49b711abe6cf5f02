"""Saliency, Input x Gradient, SmoothGrad, Guided Backprop against captum and hand loops."""

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGBP
from captum.attr import InputXGradient as CaptumIxG
from captum.attr import NoiseTunnel
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from medxai.errors import InputError
from medxai.explain import GuidedBackprop, InputXGradient, Saliency, SmoothGrad


def _cnn(inplace=False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 5)).eval()


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _x(b=3, s=10, seed=1):
    torch.manual_seed(seed)
    return torch.rand(b, 3, s, s)


def _hand_grad(model, x, t, output="logit"):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out = {"logit": out, "softmax": out.softmax(-1), "sigmoid": out.sigmoid()}[output]
    out[torch.arange(len(t)), t].sum().backward()
    return x.grad


@pytest.mark.parametrize("absolute", [True, False])
def test_saliency_matches_captum(absolute):
    model, x, t = _cnn(), _x(), torch.tensor([0, 4, 2])
    ours = Saliency(model, absolute=absolute).attribute(x, t)
    ref = CaptumSaliency(model).attribute(x, target=t, abs=absolute)
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-6)


def test_input_x_gradient_matches_captum_and_output_choice():
    model, x, t = _cnn(), _x(), torch.tensor([1, 1, 3])
    torch.testing.assert_close(InputXGradient(model).attribute(x, t),
                               CaptumIxG(model).attribute(x, target=t).detach(), atol=1e-7, rtol=1e-6)
    for output in ("softmax", "sigmoid"):
        ours = Saliency(model, output=output, absolute=False).attribute(x, t)
        torch.testing.assert_close(ours, _hand_grad(model, x, t, output), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("cls", [Saliency, InputXGradient, GuidedBackprop])
def test_top_k_one_forward_equals_separate_calls(cls):
    model = Counting(_cnn())
    x = _x()
    model.calls = 0
    maps = cls(model).attribute(x, top_k=3)
    assert model.calls == 1  # targets resolved from the same forward that is differentiated
    with torch.no_grad():
        top = model(x).argsort(1, descending=True)[:, :3]
    assert maps.shape == (3, 3, 3, 10, 10)
    for j in range(3):
        torch.testing.assert_close(maps[:, j], cls(model).attribute(x, top[:, j]), atol=0, rtol=0)
    # None = predicted class
    torch.testing.assert_close(cls(model).attribute(x), maps[:, 0], atol=0, rtol=0)


def test_guided_backprop_matches_captum_and_handles_inplace_relu():
    model, x, t = _cnn(), _x(), torch.tensor([0, 4, 2])
    ours = GuidedBackprop(model).attribute(x, t)
    torch.testing.assert_close(ours, CaptumGBP(model).attribute(x, target=t), atol=1e-7, rtol=1e-6)
    assert not torch.allclose(ours, Saliency(model, absolute=False).attribute(x, t))  # guided differs
    inplace = _cnn(inplace=True)
    torch.testing.assert_close(GuidedBackprop(inplace).attribute(x, t), ours, atol=1e-7, rtol=1e-6)
    assert inplace[2].inplace and not inplace[2]._forward_hooks
    # afterwards the model backpropagates normally again
    torch.testing.assert_close(Saliency(inplace, absolute=False).attribute(x, t), _hand_grad(model, x, t))


@pytest.mark.parametrize("kind", ["mean", "squared", "vargrad"])
def test_smoothgrad_matches_captum_noise_tunnel_with_same_noise(kind):
    model, x, t = _cnn(), _x(b=2), torch.tensor([3, 0])
    n, sigma = 6, 0.2
    torch.manual_seed(123)
    ref = NoiseTunnel(CaptumSaliency(model)).attribute(
        x, nt_type={"mean": "smoothgrad", "squared": "smoothgrad_sq", "vargrad": "vargrad"}[kind],
        nt_samples=n, stdevs=sigma, target=t, abs=False)
    # captum draws torch.normal(0, sigma) for x.repeat_interleave(n) in one call: rows b * n + k
    torch.manual_seed(123)
    noise = torch.normal(0, torch.full((2 * n, *x.shape[1:]), sigma)).view(2, n, *x.shape[1:]).transpose(0, 1)
    ours = SmoothGrad(model, kind=kind, n_samples=n, sigma=sigma).attribute(x, t, noise=noise)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_smoothgrad_relative_sigma_seeded_chunked_and_unclamped():
    model, x, t = _cnn(), _x(b=3), torch.tensor([1, 2, 3])
    x[1] = x[1] * 0.1 + 0.9  # sample ranges differ: sigma is per sample
    n, level = 7, 0.3
    sg = SmoothGrad(model, kind="squared", n_samples=n, noise_level=level, seed=9)
    ours = sg.attribute(x, t)
    # hand loop: the same generator, one (B, C, H, W) standard-normal draw per copy
    gen = torch.Generator().manual_seed(9)
    rng = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(3, 1, 1, 1)
    acc = torch.zeros_like(x)
    for _ in range(n):
        acc += _hand_grad(model, x + torch.randn(x.shape, generator=gen) * level * rng, t) ** 2
    torch.testing.assert_close(ours, acc / n, atol=1e-6, rtol=1e-5)
    for kw in ({"internal_batch_size": 2}, {"internal_batch_size": 5}, {"memory_budget": 1}):
        part = SmoothGrad(model, kind="squared", n_samples=n, noise_level=level, seed=9, **kw).attribute(x, t)
        torch.testing.assert_close(part, ours, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(SmoothGrad(model, n_samples=n, seed=10).attribute(x, t),
                              SmoothGrad(model, n_samples=n, seed=9).attribute(x, t))
    # the model sees x + noise as is (values outside [0, 1] included): no clamping
    seen = []
    probe = nn.Sequential(nn.Identity(), model)
    probe[0].register_forward_hook(lambda m, i, o: seen.append((float(o.min()), float(o.max()))))
    SmoothGrad(probe, n_samples=n, noise_level=level, seed=9).attribute(x, t)
    assert max(hi for _, hi in seen) > 1.0 and min(lo for lo, _ in seen) < 0.0


def test_smoothgrad_multi_target_and_sigma_zero():
    model, x = Counting(_cnn()), _x(b=2)
    sg = SmoothGrad(model, n_samples=4, seed=0, internal_batch_size=100)
    model.calls = 0
    both = sg.attribute(x, torch.tensor([[0, 3], [2, 1]]))
    assert model.calls == 1  # 4 copies x 2 samples in one chunk, both targets from it
    torch.testing.assert_close(both[:, 1], sg.attribute(x, torch.tensor([3, 1])), atol=0, rtol=0)
    # sigma 0: every copy is x, SmoothGrad = gradient, VarGrad = 0
    torch.testing.assert_close(SmoothGrad(model, n_samples=3, sigma=0.0).attribute(x, 2),
                               Saliency(model, absolute=False).attribute(x, 2))
    assert float(SmoothGrad(model, kind="vargrad", n_samples=3, sigma=0.0).attribute(x, 2).abs().max()) < 1e-10


def test_bad_config_and_input_refused():
    model = _cnn()
    with pytest.raises(InputError):
        SmoothGrad(model, kind="median")
    with pytest.raises(InputError):
        SmoothGrad(model, n_samples=2).attribute(_x(b=1), 0, noise=torch.zeros(3, 1, 3, 10, 10))
    with pytest.raises(InputError):
        Saliency(model).attribute(_x() * 2, 0)
    with pytest.raises(InputError):
        Saliency(model).attribute(_x(), 5)
    with pytest.raises(InputError):
        GuidedBackprop(nn.Sequential(nn.Flatten(), nn.Linear(300, 2))).attribute(_x(), 0)
