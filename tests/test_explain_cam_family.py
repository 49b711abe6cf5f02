"""HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM, FullGrad and the CAM options
(aug_smooth, eigen_smooth, several layers, reshape, 3-D volumes), each against an independent
reference written here from the paper's equation (numpy / explicit autograd on a split model)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain import (
    REGISTRY,
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    preserve_model,
)
from medxai.explain.base import TargetSpec
from medxai.explain.cam import channels_last, find_cam_layer

SPLIT = 6  # model[:6] ends with the second conv's ReLU, module "5"


def _cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.3, 0.3)
    return m.to(dtype).eval()


def _x(b=3, s=16, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, s, generator=g).to(dtype)


T3 = torch.tensor([0, 2, 1])


def _split(model, x, t):
    """A = the output of module "5" (the second ReLU), and per-sample d f_t / d A."""
    a = model[:SPLIT](x).detach().requires_grad_(True)
    out = model[SPLIT:](a)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    return a.detach().numpy(), g.numpy(), out.detach()


def _relu(m):
    return np.maximum(m, 0)[:, None]


# ----------------------------------------------------------------------------- gradient CAMs


def test_hirescam_known_answer_is_gradient_times_activation():
    """HiResCAM (Draelos & Carin 2020, eq. 4) = relu(sum_k dA * A), from autograd directly; with a
    linear head on global-average pooling it is the CAM of Zhou 2016: sum_k w_ck A^k / (h w)."""
    model, x = _cnn(), _x()
    ours = HiResCAM(model, layer="5", upsample=False).attribute(x, T3)
    a, g, _ = _split(model, x, T3)
    np.testing.assert_allclose(ours.numpy(), _relu((a * g).sum(1)), rtol=1e-9, atol=1e-12)
    w = model[8].weight.detach().numpy()[T3.numpy()]  # (B, K)
    zhou = np.einsum("bk,bkij->bij", w, a) / (a.shape[2] * a.shape[3])
    np.testing.assert_allclose(ours.numpy(), _relu(zhou), rtol=1e-9, atol=1e-12)
    assert float(ours.max()) > 0


def test_xgradcam_equals_eq15():
    """Fu et al. 2020: w_k = sum_ij A_ij g_ij / (sum_ij A_ij + 1e-7)."""
    model, x = _cnn(), _x()
    ours = XGradCAM(model, layer="5", upsample=False).attribute(x, T3)
    a, g, _ = _split(model, x, T3)
    ref = np.zeros(a.shape[:1] + a.shape[2:])
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            ref[b] += (a[b, k] * g[b, k]).sum() / (a[b, k].sum() + 1e-7) * a[b, k]
    np.testing.assert_allclose(ours.numpy(), _relu(ref), rtol=1e-7, atol=1e-12)
    assert float(ours.max()) > 0


def test_layercam_equals_eq6():
    """Jiang et al. 2021: M = relu(sum_k relu(g^k) * A^k), at a layer with signed activations (conv "4")."""
    model, x = _cnn(), _x()
    ours = LayerCAM(model, layer="4", upsample=False, relu=False).attribute(x, T3)
    a = model[:5](x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model[5:](a).gather(1, T3[:, None]).sum(), a)
    ref = (np.maximum(g.numpy(), 0) * a.detach().numpy()).sum(1)[:, None]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-12)
    assert (a < 0).any() and (g < 0).any()  # signed A and g: the ReLU on g matters
    assert not np.allclose(ref, (g * a).sum(1, keepdim=True).detach().numpy())


def _pc1(m):
    """First principal component projection (Eigen-CAM eq. 4 - 5), numpy SVD, centred columns,
    sign flipped where |min| > max. m: (K, h, w)."""
    r = m.reshape(m.shape[0], -1).T
    r = r - r.mean(0)
    _, _, vt = np.linalg.svd(r, full_matrices=False)
    p = r @ vt[0]
    if abs(p.min()) > p.max():
        p = -p
    return p.reshape(m.shape[1:])


def test_eigencam_equals_first_principal_component():
    model, x = _cnn(), _x()
    ours = EigenCAM(model, layer="5", upsample=False).attribute(x, T3)
    a, _, _ = _split(model, x, T3)
    np.testing.assert_allclose(ours.numpy(), _relu(np.stack([_pc1(ai) for ai in a])), rtol=1e-7, atol=1e-10)
    # gradient-free: the same map for every target
    many = EigenCAM(model, layer="5", upsample=False).attribute(x, torch.tensor([[0, 1], [2, 0], [1, 1]]))
    torch.testing.assert_close(many[:, 0], ours, atol=0, rtol=0)
    torch.testing.assert_close(many[:, 1], ours, atol=0, rtol=0)


def test_eigen_smooth_is_pc1_of_weighted_activations():
    model, x = _cnn(), _x()
    ours = GradCAM(model, layer="5", upsample=False, eigen_smooth=True).attribute(x, T3)
    a, g, _ = _split(model, x, T3)
    w = g.mean((2, 3))
    ref = np.stack([_pc1(w[b][:, None, None] * a[b]) for b in range(3)])
    np.testing.assert_allclose(ours.numpy(), _relu(ref), rtol=1e-7, atol=1e-10)


def test_scorecam_equals_softmax_of_masked_scores():
    """Wang et al. 2020 (eq. 5 - 8) with pytorch-grad-cam's weights: softmax over channels of the
    logit at x * minmax(upsample(A^k)), one masked image at a time."""
    model, x = _cnn(), _x()
    ours = ScoreCAM(model, layer="5", upsample=False, batch_size=5).attribute(x, T3)
    a, _, _ = _split(model, x, T3)
    ref = []
    for b in range(3):
        scores = []
        for k in range(a.shape[1]):
            h = F.interpolate(torch.from_numpy(a[b, k])[None, None], size=(16, 16), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
            h = (h - h.min()) / (h.max() - h.min() + 1e-8)
            with torch.no_grad():
                scores.append(float(model(x[b:b + 1] * torch.from_numpy(h))[0, T3[b]]))
        s = np.exp(np.array(scores) - max(scores))
        ref.append(np.tensordot(s / s.sum(), a[b], axes=1))
    np.testing.assert_allclose(ours.numpy(), _relu(np.stack(ref)), rtol=1e-7, atol=1e-12)
    assert float(ours.max()) > 0


def test_ablationcam_equals_eq3():
    """Desai & Ramaswamy 2020 eq. 3: w_k = (y_c - y_c^k) / y_c with channel k of A zeroed."""
    model, x = _cnn(), _x()
    ours = AblationCAM(model, layer="5", upsample=False, relu=False, batch_size=7).attribute(x, T3)
    a, _, out = _split(model, x, T3)
    ref = np.zeros(a.shape[:1] + a.shape[2:])
    for b in range(3):
        y = float(out[b, T3[b]])
        for k in range(a.shape[1]):
            ab = a[b:b + 1].copy()
            ab[0, k] = 0
            with torch.no_grad():
                yk = float(model[SPLIT:](torch.from_numpy(ab))[0, T3[b]])
            ref[b] += (y - yk) / y * a[b, k]
    np.testing.assert_allclose(ours.numpy(), ref[:, None], rtol=1e-7, atol=1e-12)


def _fullgrad_ref(model, x, t):
    """FullGrad eq. 4 from an explicit walk of the Sequential: bias-gradients of conv and BN outputs."""
    xg = x.clone().requires_grad_(True)
    h, zs, biases = xg, [], []
    for m in model:
        h = m(h)
        if isinstance(m, nn.Conv2d):
            zs.append(h)
            biases.append(m.bias.detach().numpy())
        if isinstance(m, nn.BatchNorm2d):
            zs.append(h)
            biases.append((m.bias - m.weight * m.running_mean / torch.sqrt(m.running_var + m.eps)).detach().numpy())
    gs = torch.autograd.grad(h.gather(1, t[:, None]).sum(), [xg, *zs])

    def mm(v):
        return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)

    gx = np.abs(gs[0].numpy() * x.numpy())
    out = []
    for b in range(x.shape[0]):
        s = mm(gx[b]).sum(0)
        for bias, g in zip(biases, gs[1:], strict=True):
            z = torch.from_numpy(np.abs(g[b].numpy() * bias[:, None, None]))[None]
            up = F.interpolate(z, size=x.shape[2:], mode="bilinear", align_corners=False)[0].numpy()
            s = s + sum(mm(up[k]) for k in range(up.shape[0]))
        out.append(s)
    return np.stack(out)[:, None]


def test_fullgrad_equals_eq4():
    model, x = _cnn(), _x()
    ours = FullGrad(model).attribute(x, T3)
    np.testing.assert_allclose(ours.numpy(), _fullgrad_ref(model, x, T3), rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------- batch, targets, model state

LAYER_CAMS = [HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM]


def _make(cls, model, **kw):
    return cls(model, **kw) if cls is FullGrad else cls(model, layer="4", **kw)


@pytest.mark.parametrize("cls", [*LAYER_CAMS, FullGrad])
def test_batch_equals_single_and_targets_axis(cls):
    model, x = _cnn(torch.float32), _x(dtype=torch.float32)
    batch = _make(cls, model, relu=False).attribute(x, T3) if cls is not FullGrad else \
        _make(cls, model).attribute(x, T3)
    for i in range(3):
        alone = _make(cls, model, **({} if cls is FullGrad else {"relu": False})).attribute(x[i:i + 1], int(T3[i]))
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-6, rtol=1e-5)
    top = _make(cls, model).attribute(x, top_k=2)
    tt = torch.tensor([[2, 0], [1, 1], [0, 2]])
    two = _make(cls, model).attribute(x, tt)
    assert top.shape == two.shape == (3, 2, 1, 16, 16)
    with torch.no_grad():
        order = torch.sort(model(x), dim=1, descending=True, stable=True).indices[:, :2]
    for j in range(2):
        torch.testing.assert_close(top[:, j], _make(cls, model).attribute(x, order[:, j]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(two[:, j], _make(cls, model).attribute(x, tt[:, j]), atol=1e-6, rtol=1e-5)
    if cls is not EigenCAM:
        assert not torch.allclose(two[:, 0], two[:, 1])


class Flaky(nn.Module):
    """Raises on its ``fail_at``-th call (counting from 1)."""

    def __init__(self, fail_at):
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("flaky")
        return x


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
            [p.clone() for p in model.parameters()], [b.clone() for b in model.buffers()])


def _same(s1, s2):
    assert s1[:3] == s2[:3]
    for u, v in zip(s1[3] + s1[4], s2[3] + s2[4], strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("cls", [*LAYER_CAMS, FullGrad])
@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_model_left_unchanged_also_on_error(cls, fail_at):
    model = _cnn(torch.float32)
    model.insert(6, Flaky(fail_at))  # after the CAM layer: raises in the capture forward or a perturbed one
    model.train()
    model[0].register_forward_hook(lambda *a: None)
    before = _state(model)
    x = _x(dtype=torch.float32)
    if fail_at == 0:
        _make(cls, model, aug_smooth=False).attribute(x, T3) if cls is not FullGrad else FullGrad(model).attribute(x)
    elif fail_at == 2 and cls not in (ScoreCAM, AblationCAM):
        with pytest.raises(InputError):  # target out of range, after the hooks are in
            _make(cls, model).attribute(x, 7)
    else:
        with pytest.raises(RuntimeError, match="flaky"):
            _make(cls, model).attribute(x, T3)
    _same(before, _state(model))
    assert all(p.grad is None for p in model.parameters())


def test_registry_names():
    for name, cls in [("hirescam", HiResCAM), ("xgradcam", XGradCAM), ("layercam", LayerCAM), ("eigencam", EigenCAM),
                      ("scorecam", ScoreCAM), ("ablationcam", AblationCAM), ("fullgrad", FullGrad)]:
        assert REGISTRY.get(name) is cls and cls.name == name


# ----------------------------------------------------------------------------- options


def test_aug_smooth_is_mean_over_flips_and_multipliers():
    """pytorch-grad-cam's test-time augmentation: {identity, h-flip} x {1.0, 1.1, 0.9}, maps un-flipped,
    averaged; targets from the clean image. Reference: captum LayerGradCam on each augmented input."""
    model, x = _cnn(), _x()
    ours = GradCAM(model, layer="4", upsample=False, aug_smooth=True).attribute(x)
    with torch.no_grad():
        t = model(x).argmax(1)
    ref = 0
    for flip in (False, True):
        for mult in (1.0, 1.1, 0.9):
            xa = (x.flip(-1) if flip else x) * mult
            m = LayerGradCam(model, model[4]).attribute(xa, target=t, relu_attributions=True).detach()
            ref = ref + (m.flip(-1) if flip else m)
    torch.testing.assert_close(ours, ref / 6, atol=1e-10, rtol=1e-7)
    assert not torch.allclose(ours, GradCAM(model, layer="4", upsample=False).attribute(x))


def _minmax(m):
    """Per-map min-max; a constant map (e.g. all zero after the ReLU) becomes 0."""
    lo = m.amin((-2, -1), keepdim=True)
    hi = m.amax((-2, -1), keepdim=True)
    return torch.nan_to_num((m - lo) / (hi - lo), nan=0.0)


@pytest.mark.parametrize("cls", [GradCAM, HiResCAM, ScoreCAM])
def test_several_layers_fused_by_minmax_mean(cls):
    """Each layer's ReLU'd map upsampled to the input, min-max normalised, then averaged; the earlier
    layer's gradient is exact although the later one is captured in the same forward."""
    model, x = _cnn(), _x()
    fused = cls(model, layer=["2", "4"]).attribute(x, T3)
    ref = (_minmax(cls(model, layer="2").attribute(x, T3)) + _minmax(cls(model, layer="4").attribute(x, T3))) / 2
    torch.testing.assert_close(fused, ref, atol=1e-10, rtol=1e-7)
    with pytest.raises(ConfigError):
        cls(model, layer=["2", "4"], upsample=False)


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class Back(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("cls", [GradCAM, HiResCAM, EigenCAM, AblationCAM])
def test_reshape_channels_last(cls):
    model, x = _cnn(), _x()
    nhwc = nn.Sequential(*model[:5], ChannelsLast(), Back(), *model[5:]).eval()
    ours = cls(nhwc, layer="5", reshape=channels_last, upsample=False).attribute(x, T3)
    ref = cls(model, layer="4", upsample=False).attribute(x, T3)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-7)
    with pytest.raises(ConfigError):
        cls(nhwc, layer="5", reshape=lambda t: t.flatten(1), upsample=False).attribute(x, T3)


# ----------------------------------------------------------------------------- 3-D volumes


def _net3d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(5, 3)).double().eval()


@pytest.mark.parametrize("cls", [GradCAM, HiResCAM, ScoreCAM])
def test_volumes_upsample_trilinear(cls):
    """5-D activations (B, K, D, h, w) -> (D, H, W) of a 5-D input, through ``attribute`` and
    ``explain`` (volumes in, (B, 1, D, H, W) maps out)."""
    model = _net3d()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 8, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2])
    assert find_cam_layer(model, x)[0] == "4"  # automatic: the last 5-D output with more than one position
    cam = cls(model, layer="4")
    with preserve_model(model):
        ours = cam._compute(x, TargetSpec(t))
    a = model[:5](x).detach().requires_grad_(True)
    out = model[5:](a)
    (gr,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    a = a.detach()
    if cls is GradCAM:
        raw = (gr.mean((2, 3, 4), keepdim=True) * a).sum(1, keepdim=True)
    elif cls is HiResCAM:
        raw = (gr * a).sum(1, keepdim=True)
    else:
        w = torch.zeros(2, a.shape[1], dtype=a.dtype)
        for b in range(2):
            for k in range(a.shape[1]):
                h = F.interpolate(a[b:b + 1, k:k + 1], size=(8, 8, 8), mode="trilinear", align_corners=False)
                h = (h - h.min()) / (h.max() - h.min() + 1e-8)
                with torch.no_grad():
                    w[b, k] = model(x[b:b + 1] * h)[0, t[b]]
        raw = (torch.softmax(w, 1)[..., None, None, None] * a).sum(1, keepdim=True)
    ref = F.interpolate(raw.clamp(min=0), size=(8, 8, 8), mode="trilinear", align_corners=False)
    assert ours.shape == (2, 1, 1, 8, 8, 8)
    torch.testing.assert_close(ours[:, 0], ref, atol=1e-10, rtol=1e-7)
    torch.testing.assert_close(cls(model, layer="4").attribute(x, t), ref, atol=1e-10, rtol=1e-7)
    from medxai.explain import explain

    name = {GradCAM: "gradcam", HiResCAM: "hirescam", ScoreCAM: "scorecam"}[cls]
    torch.testing.assert_close(explain(model, x, name, t, layer="4"), ref, atol=1e-10, rtol=1e-7)


def test_input_requiring_grad_changes_nothing_and_backward_stops_at_the_layer():
    model, x = _cnn(), _x()
    calls = []
    model[0].register_full_backward_hook(lambda *a: calls.append(1))
    ref = HiResCAM(model, layer="5").attribute(x, T3)
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(HiResCAM(model, layer="5").attribute(xg, T3), ref, atol=0, rtol=0)
    assert calls == [] and xg.grad is None


class TokenNet(nn.Module):
    """Patch embedding to a 4 x 4 grid of D = 6 tokens behind 2 prefix tokens, a token MLP, mean-pool head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 2, 6))
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)
        self.num_prefix_tokens = 2

    def tokens(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.block(torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], 1))

    def forward(self, x):
        return self.head(self.tokens(x).mean(1))


def test_ablationcam_on_tokens_zeroes_the_patch_tokens_channel():
    """Token layers: channel k of the patch grid is ablated (the prefix tokens are not on the grid and kept)."""
    model, x = TokenNet().double().eval(), _x()
    ours = AblationCAM(model, layer="block", upsample=False, relu=False).attribute(x, T3)
    with torch.no_grad():
        tok = model.tokens(x)
        y = model.head(tok.mean(1)).gather(1, T3[:, None])[:, 0]
        grid = tok[:, 2:].transpose(1, 2).reshape(3, 6, 4, 4)
        ref = torch.zeros(3, 1, 4, 4, dtype=x.dtype)
        for k in range(6):
            ab = tok.clone()
            ab[:, 2:, k] = 0
            yk = model.head(ab.mean(1)).gather(1, T3[:, None])[:, 0]
            ref += ((y - yk) / y)[:, None, None, None] * grid[:, k:k + 1]
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-7)
