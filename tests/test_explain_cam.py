"""Grad-CAM and Grad-CAM++: captum agreement, per-sample targets, eq. 19, layers, ViT tokens."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from medxai.errors import ConfigError
from medxai.explain import GradCAM, GradCAMPlusPlus, find_cam_layer
from medxai.explain.cam import tokens_to_grid


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _x(b=4, s=12, seed=1):
    torch.manual_seed(seed)
    return torch.rand(b, 3, s, s)


@pytest.mark.parametrize("layer", ["4", "5"])
def test_gradcam_equals_captum_layergradcam(layer):
    model, x, t = _cnn(), _x(), torch.tensor([0, 4, 2, 2])
    ours = GradCAM(model, layer=layer, upsample=False).attribute(x, t)
    ref = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=t, relu_attributions=True)
    assert ours.shape == ref.shape == (4, 1, 6, 6)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    by_module = GradCAM(model, layer=model[int(layer)], upsample=False).attribute(x, t)
    torch.testing.assert_close(by_module, ours, atol=0, rtol=0)
    # upsampled: bilinear, align_corners=False, of the raw map; relu=False keeps negatives
    up = GradCAM(model, layer=layer).attribute(x, t)
    torch.testing.assert_close(up, F.interpolate(ours, size=(12, 12), mode="bilinear", align_corners=False))
    signed = GradCAM(model, layer=layer, upsample=False, relu=False).attribute(x, t)
    ref_signed = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=t)
    torch.testing.assert_close(signed, ref_signed, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
@pytest.mark.parametrize("relu", [True, False])
def test_per_sample_targets_equal_running_alone(cls, relu):
    model, x = _cnn(), _x()
    t = torch.tensor([3, 0, 1, 4])
    batch = cls(model, layer="4", relu=relu).attribute(x, t)
    for i in range(4):
        alone = cls(model, layer="4", relu=relu).attribute(x[i:i + 1], int(t[i]))
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-6, rtol=1e-5)
    if not relu:  # each sample's map is not the map of a shared class or of a sum of classes (MONAI's trap)
        shared = cls(model, layer="4", relu=False).attribute(x, 0)
        assert not torch.allclose(batch[0], shared[0], atol=1e-4)


def _eq19(model, split, x, t):
    """Grad-CAM++ eq. 19 in float64 numpy from an explicit split of the model at the layer."""
    a = model[:split](x).detach().requires_grad_(True)
    out = model[split:](a)
    maps = []
    for b in range(x.shape[0]):
        (g,) = torch.autograd.grad(out[b, t[b]], a, retain_graph=True)
        gb, ab = g[b].numpy(), a[b].detach().numpy()
        m = np.zeros(ab.shape[1:])
        for k in range(ab.shape[0]):
            gk, ak = gb[k], ab[k]
            den = 2 * gk**2 + ak.sum() * gk**3 + 1e-6
            alpha = np.where(gk != 0, gk**2 / den, 0.0)
            m += (alpha * np.maximum(gk, 0)).sum() * ak
        maps.append(np.maximum(m, 0))
    return np.stack(maps)[:, None]


def test_gradcampp_equals_paper_eq19():
    model = _cnn().double()
    x, t = _x().double(), torch.tensor([1, 2, 0, 4])
    ours = GradCAMPlusPlus(model, layer="4", upsample=False).attribute(x, t)
    np.testing.assert_allclose(ours.numpy(), _eq19(model, 5, x, t), rtol=1e-9, atol=1e-12)
    assert ours.dtype == torch.float64
    assert not np.allclose(ours.numpy(), GradCAM(model, layer="4", upsample=False).attribute(x, t).numpy())


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_top_k_one_forward_equals_separate_calls(cls):
    model = Counting(_cnn())
    x = _x()
    model.calls = 0
    maps = cls(model, layer="inner.4").attribute(x, top_k=3)
    assert model.calls == 1
    assert maps.shape == (4, 3, 1, 12, 12)
    with torch.no_grad():
        top = model(x).argsort(1, descending=True)[:, :3]
    for j in range(3):
        torch.testing.assert_close(maps[:, j], cls(model, layer="inner.4").attribute(x, top[:, j]), atol=0, rtol=0)


def test_gradient_reaches_only_the_layer():
    model, x = _cnn(), _x()
    calls = []
    model[0].register_full_backward_hook(lambda *a: calls.append(1))
    GradCAM(model, layer="4").attribute(x, 1)
    assert calls == [] and all(p.grad is None for p in model.parameters())
    model(x.clone().requires_grad_(True)).sum().backward()
    assert calls  # the hook is live: a full backward would have reached it


def test_layer_resolution():
    model, x = _cnn(), _x()
    # automatic: the last 4-D output with more than one position (the pooled 1 x 1 is skipped)
    name, mod = find_cam_layer(model, x)
    assert name == "5" and mod is model[5]
    cam = GradCAM(model)
    torch.testing.assert_close(cam.attribute(x, 2), GradCAM(model, layer="5").attribute(x, 2), atol=0, rtol=0)
    assert cam.layer == "5"
    model.default_cam_layer = "2"
    assert find_cam_layer(model, x)[0] == "2"
    torch.testing.assert_close(GradCAM(model).attribute(x, 2), GradCAM(model, layer="2").attribute(x, 2))
    with pytest.raises(ConfigError):
        GradCAM(model, layer="nope").attribute(x, 0)
    with pytest.raises(ConfigError):
        GradCAM(model, layer="8").attribute(x, 0)  # the Linear head: (B, K) output


class ToyViT(nn.Module):
    """Patch embedding 3 -> D on a 4 x 4 grid, ``prefix`` extra tokens, one block, mean-pool head."""

    def __init__(self, prefix: int, declare: bool):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, prefix, 8))
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 3)
        if declare:
            self.num_prefix_tokens = prefix

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], 1)
        return self.head(self.block(t).mean(1))

    def split(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], 1)


@pytest.mark.parametrize(("prefix", "declare"), [(1, False), (5, False), (9, True)])
def test_vit_tokens_reshaped_to_grid(prefix, declare):
    model = ToyViT(prefix, declare).eval()
    x, t = _x(b=2, s=16), torch.tensor([0, 2])
    ours = GradCAM(model, layer="block", upsample=False).attribute(x, t)
    a = model.block(model.split(x)).detach().requires_grad_(True)
    out = model.head(a.mean(1))
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    a_p, g_p = a[:, prefix:].detach(), g[:, prefix:]  # (B, 16, D)
    w = g_p.mean(1)  # (B, D)
    ref = (a_p * w[:, None]).sum(-1).clamp(min=0).view(2, 1, 4, 4)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_tokens_to_grid():
    t = torch.arange(2 * 197 * 3, dtype=torch.float32).view(2, 197, 3)
    g = tokens_to_grid(t)
    assert g.shape == (2, 3, 14, 14)
    assert g[1, 2, 0, 1] == t[1, 1 + 1, 2] and g[0, 0, 13, 13] == t[0, 196, 0]
    assert tokens_to_grid(torch.zeros(1, 201, 4)).shape == (1, 4, 14, 14)
    with pytest.raises(Exception, match="square"):
        tokens_to_grid(torch.zeros(1, 20, 4), n_prefix=1)


def test_zoo_resnet18_automatic_layer_equals_captum():
    models = pytest.importorskip("medxai.models")
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=5).eval()
    x, t = _x(b=3, s=64), torch.tensor([0, 3, 4])
    cam = GradCAM(model, upsample=False)
    ours = cam.attribute(x, t)
    assert cam.layer == model.default_cam_layer
    ref = LayerGradCam(model, model.get_submodule(model.default_cam_layer)).attribute(
        x, target=t, relu_attributions=True)
    assert ours.shape == ref.shape == (3, 1, 2, 2)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_zoo_vit_token_layer():
    models = pytest.importorskip("medxai.models")
    torch.manual_seed(0)
    model = models.create("vit-ti4", num_classes=3, img_size=32).eval()
    x, t = _x(b=2, s=32), torch.tensor([2, 0])
    ours = GradCAM(model, upsample=False).attribute(x, t)
    layer = model.get_submodule(model.default_cam_layer)
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(x.clone())
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    p = getattr(model, "num_prefix_tokens", 1)
    w = g[:, p:].mean(1)
    ref = (a[:, p:].detach() * w[:, None]).sum(-1).clamp(min=0).view(2, 1, 8, 8)
    assert ours.shape == (2, 1, 8, 8)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


# one per CNN family; resnet50 and inception-v3 (which needs >= 139 px for a 3 x 3 layer) cost 10-30 s each on
# CPU and only have their automatic layer's 4-D output checked (tests/test_models_zoo.py)
CNN_ZOO = ["small-cnn", "resnet8", "densenet121", "mobilenet-v2", "efficientnet-b0"]


@pytest.mark.parametrize("name", CNN_ZOO)
def test_automatic_layer_of_every_zoo_family_is_spatial_and_equals_captum(name):
    """For a CNN of each family of the registry (resnet18 above; ViTs in test_zoo_vit_token_layer) the
    automatic layer has a spatial output and the maps equal captum's LayerGradCam there, with
    per-sample targets; signed (relu=False), since randomly initialised deep nets often have an
    all-negative CAM that the ReLU would zero."""
    models = pytest.importorskip("medxai.models")
    torch.manual_seed(0)
    model = models.create(name, num_classes=4).eval()
    x, t = _x(b=2, s=64), torch.tensor([3, 1])
    cam = GradCAM(model, upsample=False, relu=False)
    ours = cam.attribute(x, t)
    layer = model.get_submodule(cam.layer)
    ref = LayerGradCam(model, layer).attribute(x, target=t).detach()
    assert ours.shape == ref.shape and ours.shape[-1] * ours.shape[-2] > 1, ours.shape
    assert float(ref.abs().max()) > 0  # not vacuous
    torch.testing.assert_close(ours, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)
    torch.testing.assert_close(GradCAM(model, layer=cam.layer, upsample=False).attribute(x, t), ref.clamp(min=0),
                               atol=1e-5 * float(ref.abs().max()), rtol=1e-4)
