"""NoiseTunnel over registered methods, Guided Grad-CAM and Deconvnet: equal to captum's NoiseTunnel,
GuidedGradCam and Deconvolution; VarGrad is the variance; batch independence, seeds, (B, T) targets,
chunking, no side effects."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain import REGISTRY, Deconvnet, GuidedGradCam, NoiseTunnel, Saliency, explain
from medxai.explain.base import TargetSpec


def _cnn(k: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, k)).double().eval()


def _x(b: int = 3, h: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


T = torch.tensor([0, 2, 4])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _captum_noise(b: int, n: int, sd: float, shape: tuple, seed: int) -> torch.Tensor:
    """captum NoiseTunnel's noise: torch.normal with a float32 stdev tensor over B * n sample-major
    copies (``repeat_interleave``); ours takes (n, B, C, H, W)."""
    torch.manual_seed(seed)
    eps = torch.normal(0, torch.tensor(sd).repeat((b * n, *shape)))
    return eps.double().view(b, n, *shape).transpose(0, 1)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("inner", ["ig", "saliency"])
def test_noise_tunnel_equals_captum(inner, nt_type):
    captum = pytest.importorskip("captum.attr")
    model, x = _cnn(), _x()
    n, sd = 4, 0.1
    base = captum.IntegratedGradients(model) if inner == "ig" else captum.Saliency(model)
    kw = {"n_steps": 8, "method": "gausslegendre"} if inner == "ig" else {}
    torch.manual_seed(1)
    c = captum.NoiseTunnel(base).attribute(x, nt_type=nt_type, nt_samples=n, stdevs=sd, target=T, **kw)
    noise = _captum_noise(3, n, sd, tuple(x.shape[1:]), 1)
    ours = NoiseTunnel(model, inner, nt_type=nt_type, stdev=sd, n_samples=n,
                       method_kw={"n_steps": 8} if inner == "ig" else {}).attribute(x, T, noise=noise)
    assert _rel(ours, c.detach()) < 1e-5


def test_vargrad_is_the_variance_and_chunking_does_not_matter():
    model, x = _cnn(), _x(2)
    nt = NoiseTunnel(model, "saliency", nt_type="vargrad", stdev=0.2, n_samples=5, seed=3,
                     method_kw={"absolute": False})
    out = nt.attribute(x, T[:2])
    eps = nt.noise(x)  # (n, 1, C, H, W), shared by the batch
    # reference: the signed gradient of each noisy copy, one copy at a time (copies leave [0, 1]: the
    # checked ``attribute`` would refuse them, so the unchecked ``_compute``), then the population variance
    sal = Saliency(model, absolute=False)
    maps = torch.stack([sal._compute(x + eps[k], TargetSpec(fixed=T[:2, None]))[:, 0] for k in range(5)])
    torch.testing.assert_close(out, maps.var(0, unbiased=False), rtol=1e-9, atol=1e-14)
    tiny = NoiseTunnel(model, "saliency", nt_type="vargrad", stdev=0.2, n_samples=5, seed=3,
                       method_kw={"absolute": False}, memory_budget=1)  # one noise draw per chunk
    torch.testing.assert_close(tiny.attribute(x, T[:2]), out, rtol=1e-12, atol=1e-16)


def test_noise_tunnel_batch_independence_seed_targets_and_explain():
    model, x = _cnn(), _x()
    nt = REGISTRY.get("noise_tunnel")(model, "ig", stdev=0.1, n_samples=3, method_kw={"n_steps": 4})
    t2 = torch.tensor([[0, 1], [2, 3], [4, 0]])
    multi = nt.attribute(x, t2)
    assert multi.shape == (3, 2, 3, 16, 16)
    for j in range(2):
        torch.testing.assert_close(multi[:, j], nt.attribute(x, t2[:, j]), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(nt.attribute(x[1:2], t2[1:2]), multi[1:2], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(nt.attribute(x, t2), multi, rtol=0, atol=0)
    other = NoiseTunnel(model, "ig", stdev=0.1, n_samples=3, seed=7, method_kw={"n_steps": 4}).attribute(x, t2)
    assert float((other - multi).abs().max()) > 1e-8
    # by name through explain (``inner=``: explain's own ``method`` names the tunnel); IG sums channels
    maps = explain(model, x, "noise_tunnel", T, inner="ig", stdev=0.1, n_samples=3, method_kw={"n_steps": 4})
    direct = NoiseTunnel(model, "ig", stdev=0.1, n_samples=3, method_kw={"n_steps": 4}).attribute(x, T)
    torch.testing.assert_close(maps[:, 0], direct.sum(1), rtol=1e-10, atol=1e-14)


def test_noise_tunnel_refuses_bad_options_and_restores_model():
    model = _cnn().train()
    with pytest.raises(InputError):
        NoiseTunnel(model, "saliency", nt_type="mean")
    with pytest.raises(ConfigError):
        NoiseTunnel(model, "saliency", method_kw={"no_such_option": 1})
    nt = NoiseTunnel(model, "guided_backprop", n_samples=2)
    with pytest.raises(InputError):
        nt.attribute(_x(1), 9)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- Guided Grad-CAM, Deconvnet

def test_guided_gradcam_equals_captum_nearest_and_bilinear_reference():
    captum = pytest.importorskip("captum.attr")
    model, x = _cnn(), _x()
    layer = model[5]
    c = captum.GuidedGradCam(model, layer).attribute(x, T)  # interpolate_mode="nearest"
    ours = GuidedGradCam(model, layer, upsample_mode="nearest").attribute(x, T)
    assert _rel(ours, c.detach()) < 1e-5
    # bilinear (medxai's default): captum's guided backprop x its ReLU'd LayerGradCam upsampled bilinear
    cam = captum.LayerGradCam(model, layer).attribute(x, T, relu_attributions=True)
    ref = captum.GuidedBackprop(model).attribute(x, T) * F.interpolate(cam, size=(16, 16), mode="bilinear",
                                                                      align_corners=False)
    bil = REGISTRY.get("guided_gradcam")(model, "5").attribute(x, T)
    assert _rel(bil, ref.detach()) < 1e-5
    t2 = torch.stack([T, T.flip(0)], 1)
    multi = GuidedGradCam(model, layer).attribute(x, t2)
    torch.testing.assert_close(multi[:, 0], bil, rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(GuidedGradCam(model, layer).attribute(x[2:], T[2:]), bil[2:], rtol=1e-10, atol=1e-16)


def test_deconvnet_equals_captum_and_batch_single():
    captum = pytest.importorskip("captum.attr")
    model, x = _cnn(), _x()
    c = captum.Deconvolution(model).attribute(x, T)
    ours = Deconvnet(model).attribute(x, T)
    np.testing.assert_allclose(ours.numpy(), c.detach().numpy(), atol=1e-6 * float(c.abs().max()))
    torch.testing.assert_close(Deconvnet(model).attribute(x[1:2], T[1:2]), ours[1:2], rtol=1e-10, atol=1e-16)
    assert all(not m._forward_hooks for m in model.modules())
    # the deconvnet rule ignores the forward ReLU mask: one hidden unit whose ReLU is off still passes
    # the (positive) gradient, which plain and guided backprop stop.
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        lin[1].bias.fill_(-10.0)  # pre-activation < 0 for x in [0, 1]
        lin[3].weight.fill_(2.0)
    xs = torch.full((1, 3, 1, 1), 0.5, dtype=torch.float64)
    np.testing.assert_allclose(Deconvnet(lin).attribute(xs, 0).flatten().numpy(), [2.0, 4.0, 6.0])
    with pytest.raises(InputError):
        Deconvnet(nn.Sequential(nn.Flatten(), nn.Linear(3, 1)).double()).attribute(xs, 0)
