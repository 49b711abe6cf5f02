"""``explain`` by name, ``postprocess`` per sample, and the no-side-effects rule for every method."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain import (
    REGISTRY,
    GradCAM,
    GradCAMPlusPlus,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    explain,
    postprocess,
)
from medxai.explain.base import _HOOK_DICTS

METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "gradcam",
           "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "fullgrad", "deconvnet", "gradient_shap",
           "noise_tunnel", "guided_gradcam", "deeplift", "lrp", "lrp_zero", "lrp_epsilon", "lrp_gamma",
           "lrp_alpha_beta", "lrp_alpha1_beta0", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
           "lrp_epsilon_alpha2_beta1", "lrp_epsilon_plus"]
PERTURBATION = ["occlusion", "lime", "rise", "scorecam", "ablationcam", "kernel_shap"]
VIT_METHODS = ["raw_attention", "rollout", "chefer_generic", "chefer_lrp"]
FAST = {"integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3},
        "occlusion": {"window": 4, "stride": 3, "batch_size": 4},
        "lime": {"num_samples": 24, "segmentation_params": {"n_segments": 6}, "batch_size": 16},
        "rise": {"n_masks": 12, "s": 3, "batch_size": 8},
        "kernel_shap": {"n_samples": 16, "segmentation_params": {"n_segments": 6}, "batch_size": 16},
        "gradient_shap": {"n_samples": 3}, "noise_tunnel": {"n_samples": 2, "inner": "ig", "method_kw": {"n_steps": 3}}}


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def _x(b=3, s=10, seed=1):
    torch.manual_seed(seed)
    return torch.rand(b, 3, s, s)


# ----------------------------------------------------------------------------- explain

def test_registry_names():
    for name in [*METHODS, "ig", "gradcampp"]:
        assert name in REGISTRY
    assert REGISTRY["ig"] is IntegratedGradients and REGISTRY["gradcampp"] is GradCAMPlusPlus


def test_explain_reduces_and_upsamples_per_method():
    model, x = _cnn().eval(), _x()
    sal = explain(model, x, "saliency", 2)
    torch.testing.assert_close(sal, Saliency(model).attribute(x, 2).abs().amax(1, keepdim=True))
    ig = explain(model, x, "ig", 2, n_steps=6, baseline="blur", blur_sigma=2.0)
    ref = IntegratedGradients(model, n_steps=6, blur_sigma=2.0).attribute(x, 2, baseline="blur").sum(1, keepdim=True)
    torch.testing.assert_close(ig, ref)
    sg2 = explain(model, x, "smoothgrad", 2, kind="squared", n_samples=3)
    torch.testing.assert_close(sg2, SmoothGrad(model, kind="squared", n_samples=3).attribute(x, 2).sum(1, keepdim=True))
    cam = explain(model, x, "gradcam", 2)
    raw = GradCAM(model, layer="5", upsample=False).attribute(x, 2)
    assert raw.shape == (3, 1, 5, 5)
    torch.testing.assert_close(cam, F.interpolate(raw, size=(10, 10), mode="bilinear", align_corners=False))
    near = explain(model, x, "gradcam", 2, upsample_mode="nearest", normalize="minmax")
    ref = F.interpolate(raw, size=(10, 10), mode="nearest")
    lo, hi = ref.amin((1, 2, 3), keepdim=True), ref.amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(near, (ref - lo) / (hi - lo))
    summed = explain(model, x, "saliency", 2, reduce_channels="sum")
    torch.testing.assert_close(summed, Saliency(model).attribute(x, 2).sum(1, keepdim=True))


def test_explain_top_k_and_tuples_and_errors():
    model, x = _cnn().eval(), _x()
    maps = explain(model, x, "gradcam++", top_k=3)
    assert maps.shape == (3, 3, 1, 10, 10)
    with torch.no_grad():
        top = model(x).argsort(1, descending=True)[:, :3]
    for j in range(3):
        torch.testing.assert_close(maps[:, j], explain(model, x, "gradcam++", top[:, j]))
    out, delta = explain(model, x, "ig", 1, n_steps=4, return_convergence_delta=True)
    assert out.shape == (3, 1, 10, 10)
    torch.testing.assert_close(delta, out.flatten(1).sum(1) - (model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="does not accept"):
        explain(model, x, "saliency", 0, n_steps=3)
    with pytest.raises(ConfigError, match="known"):
        explain(model, x, "shap")


@pytest.mark.parametrize("method", METHODS)
def test_bad_inputs_refused(method):
    model = _cnn().eval()
    for bad in (_x() * 1.5, _x() - 0.2, torch.full((1, 3, 10, 10), float("nan")), _x().double().long()):
        with pytest.raises(InputError):
            explain(model, bad, method, 0, **FAST.get(method, {}))


# ----------------------------------------------------------------------------- no side effects

class Flaky(nn.Module):
    """Runs the inner model, then raises on call number ``fail_at`` (hooks have fired by then)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, None

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        if self.calls == self.fail_at:
            raise RuntimeError("midway")
        return out


def _state(model):
    return {
        "modes": [m.training for m in model.modules()],
        "req": [p.requires_grad for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [(name, sorted(getattr(m, name))) for m in model.modules() for name in _HOOK_DICTS
                  if isinstance(getattr(m, name, None), dict)],
        "inplace": [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)],
    }


def _same(a, b):
    assert a["modes"] == b["modes"] and a["req"] == b["req"] and a["grad_ids"] == b["grad_ids"]
    assert a["hooks"] == b["hooks"] and a["inplace"] == b["inplace"]
    for g, h in zip(a["grads"], b["grads"], strict=True):
        assert (g is None and h is None) or torch.equal(g, h)
    for k in a["tensors"]:
        assert torch.equal(a["tensors"][k], b["tensors"][k]), k


@pytest.mark.parametrize("method", METHODS)
def test_no_side_effects_also_when_raising_midway(method):
    model = Flaky(_cnn()).train()
    inner = model.inner
    inner[0].weight.grad = torch.ones_like(inner[0].weight)
    inner[8].bias.requires_grad_(False)
    inner[4].register_forward_hook(lambda m, i, o: None)
    x = _x()
    before = _state(model)
    kw = FAST.get(method, {})
    maps = explain(model, x, method, None, **kw)  # None: predicted class (eval mode: dropout off)
    _same(before, _state(model))
    calls = model.calls
    model.calls, model.fail_at = 0, calls  # fail on the last forward of the run
    with pytest.raises(RuntimeError, match="midway"):
        explain(model, x, method, None, **kw)
    _same(before, _state(model))
    model.calls, model.fail_at = 0, None
    torch.testing.assert_close(explain(model, x, method, None, **kw), maps, atol=0, rtol=0)  # deterministic
    assert model.training


def test_every_registered_method_is_covered_by_the_side_effect_tests():
    covered = {REGISTRY[m] for m in METHODS + PERTURBATION + VIT_METHODS}
    assert covered == {REGISTRY[n] for n in REGISTRY.names()}


@pytest.mark.parametrize("method", PERTURBATION)
def test_no_side_effects_perturbation_methods_also_when_raising_midway(method):
    test_no_side_effects_also_when_raising_midway(method)


def _vit():
    import medxai.models as M

    torch.manual_seed(0)
    return M.create("vit-ti4", 5, 3, img_size=16, depth=2, embed_dim=32, num_heads=4, drop_rate=0.1)


def _vit_state(model):
    from medxai.models.vit import Attention

    st = _state(model)
    st["attn"] = [(a.fused_attn, a.capture, a.attn_probs) for a in model.modules() if isinstance(a, Attention)]
    return st


@pytest.mark.parametrize("method", VIT_METHODS)
def test_no_side_effects_vit_methods_also_when_raising_midway(method):
    """The failure comes from a forward hook on the head (Chefer LRP runs the modules, not forward)."""
    model = _vit().train()
    model.patch_embed.proj.weight.grad = torch.ones_like(model.patch_embed.proj.weight)
    model.head.bias.requires_grad_(False)
    calls = {"n": 0, "fail_at": None}

    def maybe_fail(_m, _i, _o):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("midway")

    model.head.register_forward_hook(maybe_fail)
    x = _x(b=2, s=16)
    before = _vit_state(model)
    maps = explain(model, x, method, None)
    assert before["attn"] == _vit_state(model)["attn"]
    _same(before, _vit_state(model))
    calls["n"], calls["fail_at"] = 0, calls["n"]  # fail on the last head call of the run
    with pytest.raises(RuntimeError, match="midway"):
        explain(model, x, method, None)
    after = _vit_state(model)
    _same(before, after)
    assert after["attn"] == before["attn"]
    calls["n"], calls["fail_at"] = 0, None
    torch.testing.assert_close(explain(model, x, method, None), maps, atol=0, rtol=0)
    assert model.training


# ----------------------------------------------------------------------------- several labels from one call

class _MultiLabel(nn.Module):
    """A sigmoid-output (multi-label) model: 6 findings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", METHODS + PERTURBATION + VIT_METHODS)
def test_top_k_3_equals_three_single_target_calls(method):
    """``top_k=3`` on a multi-label model explains each sample's three most probable findings (by the
    sigmoid): the same maps as three separate calls with those targets."""
    vit = method in VIT_METHODS
    model = (_vit() if vit else _MultiLabel()).eval()
    x = _x(b=3, s=16)
    logit_only = method == "deeplift" or method.startswith("lrp")  # relevance starts from the logit
    kw = dict(FAST.get(method, {}), output="logit" if logit_only else "sigmoid")
    multi = explain(model, x, method, top_k=3, **kw)
    assert multi.shape == (3, 3, 1, 16, 16)
    with torch.no_grad():  # the sigmoid is monotone: the same order as the logits
        top = torch.sort(torch.sigmoid(model(x)), dim=1, descending=True, stable=True).indices[:, :3]
    for j in range(3):
        torch.testing.assert_close(multi[:, j], explain(model, x, method, top[:, j], **kw), atol=1e-6, rtol=1e-5)
    # eigencam ignores the target; scorecam's softmax over near-equal sigmoid scores is near uniform
    if method not in ("raw_attention", "rollout", "eigencam", "scorecam"):  # the others' maps differ by target
        assert (multi[:, 0] - multi[:, 1]).abs().max() > 1e-3 * multi.abs().max()  # relative: sigmoid maps are tiny


# ----------------------------------------------------------------------------- postprocess

def _np_norm(a, how, q=99.5):
    flat = a.reshape(a.shape[0], -1)
    if how == "minmax":
        lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
        return (flat - lo) / (hi - lo)
    if how == "maxabs":
        return flat / np.abs(flat).max(1, keepdims=True)
    s = np.percentile(np.abs(flat), q, axis=1, keepdims=True)
    return np.clip(flat / s, -1, 1)


@pytest.mark.parametrize("how", ["minmax", "maxabs", "percentile"])
def test_postprocess_normalisation_is_per_sample(how):
    torch.manual_seed(0)
    maps = torch.randn(4, 1, 8, 8, dtype=torch.float64) * torch.tensor([1e-8, 1.0, 1e3, 5.0]).view(4, 1, 1, 1)
    out = postprocess(maps, normalize=how, percentile=90)
    np.testing.assert_allclose(out.flatten(1).numpy(), _np_norm(maps.numpy(), how, 90), rtol=1e-10, atol=1e-12)
    for i in range(4):  # each sample alone gives the same: no dependence on the rest of the batch
        torch.testing.assert_close(postprocess(maps[i:i + 1], normalize=how, percentile=90), out[i:i + 1])
    zero = postprocess(torch.zeros(2, 1, 3, 3), normalize=how)
    assert torch.equal(zero, torch.zeros(2, 1, 3, 3))


def test_postprocess_channels_relu_upsample_and_targets_axis():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 3, 4, 4)  # (B, T, C, H, W)
    a = maps.numpy()
    np.testing.assert_allclose(postprocess(maps, reduce_channels="sum").numpy(), a.sum(2, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(postprocess(maps, reduce_channels="abs_sum").numpy(), np.abs(a).sum(2, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_allclose(postprocess(maps, reduce_channels="max_abs").numpy(), np.abs(a).max(2, keepdims=True))
    relu = postprocess(maps, relu=True, reduce_channels="sum")
    np.testing.assert_allclose(relu.numpy(), np.maximum(a.sum(2, keepdims=True), 0), rtol=1e-6)
    up = postprocess(maps, upsample="bilinear", size=9, normalize="minmax")
    assert up.shape == (2, 3, 3, 9, 9)
    ref = F.interpolate(maps.flatten(0, 1), size=(9, 9), mode="bilinear", align_corners=False)
    lo, hi = ref.amin((1, 2, 3), keepdim=True), ref.amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(up, ((ref - lo) / (hi - lo)).view(2, 3, 3, 9, 9))
    with pytest.raises(InputError):
        postprocess(maps, normalize="zscore")
    with pytest.raises(InputError):
        postprocess(maps, upsample="bilinear")
    with pytest.raises(InputError):
        postprocess(maps[0, 0], normalize="minmax")
