"""bf16 IG and Grad-CAM (weights cast once per explanation, fp32 sums): agreement with fp32, the
caller's model untouched (also on error), fp32 unchanged, unknown precision refused.

Model: a random-init CNN (seed 0, conv-BN-ReLU-pool-conv-ReLU-conv-ReLU-GAP-linear, eval mode) on
16 px random images: no training, so agreement is the plain bf16 rounding effect on a generic net.
"""

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain import GradCAM, GradCAMPlusPlus, IntegratedGradients, explain
from medxai.explain.precision import check_precision, low_precision


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4)).eval()


def _x(b=3, s=16, seed=1):
    torch.manual_seed(seed)
    return torch.rand(b, 3, s, s)


def _rho(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    return [float(spearmanr(u, v).statistic) for u, v in zip(a, b, strict=True)]


def _hooks(model: nn.Module) -> list:
    return [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in model.modules()]


def _snapshot(model: nn.Module) -> dict:
    return {"params": {k: (p.detach().clone(), p.data_ptr(), p.dtype, p.requires_grad)
                       for k, p in model.named_parameters()},
            "buffers": {k: (b.clone(), b.data_ptr(), b.dtype) for k, b in model.named_buffers()},
            "hooks": _hooks(model),
            "training": [m.training for m in model.modules()]}


def _assert_same(model: nn.Module, snap: dict) -> None:
    for k, p in model.named_parameters():
        v, ptr, dt, req = snap["params"][k]
        assert p.dtype == dt and p.data_ptr() == ptr and p.requires_grad == req
        assert torch.equal(p.detach(), v)  # bitwise (same storage, values unchanged)
    for k, b in model.named_buffers():
        v, ptr, dt = snap["buffers"][k]
        assert b.dtype == dt and b.data_ptr() == ptr and torch.equal(b, v)
    assert snap["hooks"] == _hooks(model)
    assert snap["training"] == [m.training for m in model.modules()]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_ig_bf16_ranks_like_fp32(method):
    model, x, t = _cnn(), _x(), torch.tensor([0, 3, 1])
    a32 = IntegratedGradients(model, n_steps=8, method=method).attribute(x, t)
    a16 = IntegratedGradients(model, n_steps=8, method=method, precision="bf16").attribute(x, t)
    assert a16.dtype == torch.float32 and a16.shape == a32.shape
    assert min(_rho(a16, a32)) >= 0.99
    # completeness (IG axiom, Sundararajan 2017 prop. 1) holds to the bf16 model's rounding
    f = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(a16.flatten(1).sum(1), f.detach(), atol=0.03 * f.abs().max().item(), rtol=0)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_cam_bf16_ranks_like_fp32(cls):
    model, x, t = _cnn(), _x(4), torch.tensor([0, 3, 1, 2])
    m32 = cls(model, layer="6", relu=False).attribute(x, t)  # signed maps: no all-zero (constant) map
    m16 = cls(model, layer="6", relu=False, precision="bf16").attribute(x, t)
    assert m16.dtype == torch.float32
    assert min(_rho(m16, m32)) >= 0.99
    torch.testing.assert_close(m16, m32, atol=0.03 * m32.abs().max().item(), rtol=0)


def test_gradcam_bf16_weights_and_sum_in_fp32():
    """The CAM's weighting sees fp32 activations and gradients (Grad-CAM eq. 1 - 2 in fp32) taken from
    the bf16 model: the map equals the fp32 formula applied to the bf16 A and dA recomputed here."""
    model, x, t = _cnn(), _x(2), torch.tensor([1, 2])
    got = GradCAM(model, layer="6", upsample=False, precision="bf16").attribute(x, t)
    with low_precision(model):
        store = {}
        h = model[6].register_forward_hook(lambda _m, _i, o: store.setdefault("A", o))
        out = model(x)
        h.remove()
        (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), store["A"])
    a, g = store["A"].detach().float(), g.float()
    want = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [IntegratedGradients, GradCAM])
def test_weights_cast_once_per_explanation(cls):
    model, x, t = _cnn(), _x(), torch.tensor([0, 1, 2])
    seen = []
    h = model[0].register_forward_hook(lambda m, i, o: seen.append((m.weight.data_ptr(), m.weight.dtype, o.dtype)))
    kw = {"n_steps": 8, "internal_batch_size": 4} if cls is IntegratedGradients else {"layer": "6"}
    cls(model, precision="bf16", **kw).attribute(x, t)
    h.remove()
    assert len(seen) >= (6 if cls is IntegratedGradients else 1)  # 24 path points in chunks of 4
    assert {s[1:] for s in seen} == {(torch.bfloat16, torch.bfloat16)}
    assert len({s[0] for s in seen}) == 1  # one cast tensor for every model call
    assert model[0].weight.dtype == torch.float32


@pytest.mark.parametrize("make", [lambda m: IntegratedGradients(m, n_steps=4, precision="bf16"),
                                  lambda m: GradCAM(m, layer="6", precision="bf16")])
def test_caller_model_unchanged_after_success_and_error(make):
    model = _cnn()
    model[1].train()  # a module in train mode: preserve_model restores it
    model[8].register_forward_hook(lambda _m, _i, o: None)  # the caller's own hook stays
    model[10].weight.requires_grad_(False)
    snap = _snapshot(model)
    make(model).attribute(_x(), torch.tensor([0, 1, 2]))
    _assert_same(model, snap)
    with pytest.raises(InputError):  # target 9 of 4 classes: raised inside the bf16 block
        make(model).attribute(_x(), torch.tensor([0, 9, 2]))
    _assert_same(model, snap)


def test_low_precision_restores_on_error_and_casts_io():
    model = _cnn()
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), low_precision(model) as m:
        assert m is model and model[0].weight.dtype == torch.bfloat16 and model[1].running_var.dtype == torch.bfloat16
        assert model(_x()).dtype == torch.float32
        raise RuntimeError("boom")
    _assert_same(model, snap)


def test_fp32_is_todays_result():
    model, x, t = _cnn(), _x(), torch.tensor([0, 3, 1])
    torch.testing.assert_close(IntegratedGradients(model, n_steps=8, precision="fp32").attribute(x, t),
                               IntegratedGradients(model, n_steps=8).attribute(x, t), atol=0, rtol=0)
    torch.testing.assert_close(GradCAM(model, layer="6", precision="fp32").attribute(x, t),
                               GradCAM(model, layer="6").attribute(x, t), atol=0, rtol=0)
    seen = []
    h = model[0].register_forward_hook(lambda m, i, o: seen.append(m.weight.dtype))
    IntegratedGradients(model, n_steps=2, precision="fp32").attribute(x, t)
    h.remove()
    assert set(seen) == {torch.float32}


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", None, 16])
def test_unknown_precision_refused(bad):
    model = _cnn()
    for make in (lambda: IntegratedGradients(model, precision=bad), lambda: GradCAM(model, precision=bad),
                 lambda: check_precision(bad)):
        with pytest.raises(ConfigError, match="precision"):
            make()


def test_explain_api_routes_precision():
    model, x, t = _cnn(), _x(), torch.tensor([0, 3, 1])
    a = explain(model, x, "integrated_gradients", t, n_steps=4, precision="bf16")
    b = IntegratedGradients(model, n_steps=4, precision="bf16").attribute(x, t)
    torch.testing.assert_close(a, b.sum(1, keepdim=True), atol=0, rtol=0)  # explain's default channel sum
