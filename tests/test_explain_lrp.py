"""LRP for CNNs (medxai.explain.lrp): analytic cases, conservation, a matrix-form reference of
Montavon 2019's rules, captum 0.9.0's LRP, the BatchNorm canonizer and model restoration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.errors import ConfigError, ModelError
from medxai.explain import REGISTRY
from medxai.explain.lrp import LRP, merge_batchnorm, merge_pairs
from medxai.models import Normalize, create

D = torch.float64


class Net(nn.Module):
    """conv-relu-maxpool-conv-relu-avgpool-linear (captum needs no Flatten module)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2))
        self.fc = nn.Linear(6 * 4 * 4, 5, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.f(x).flatten(1))


def _net(bias: bool = True, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(bias).to(D).eval()


def _x(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=D)


T3 = torch.tensor([0, 2, 4])


def test_epsilon_on_linear_model_is_input_times_weight():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4, bias=False)).to(D)
    x = _x(2)[:, :, :4, :4].contiguous()
    t = torch.tensor([1, 3])
    r = LRP(m, rule="epsilon", epsilon=0.0).attribute(x, t)
    w = m[1].weight[t].view(2, 3, 4, 4)
    torch.testing.assert_close(r, x * w, rtol=1e-12, atol=1e-14)
    z = (x * w).flatten(1).sum(1).view(2, 1, 1, 1)  # epsilon 1e-6: x w z / (z + eps sign z)
    r6 = LRP(m, rule="epsilon", epsilon=1e-6).attribute(x, t)
    torch.testing.assert_close(r6, x * w * z / (z + 1e-6 * z.sign()), rtol=1e-12, atol=1e-14)


def test_lrp0_bias_free_relu_net_is_gradient_times_input_and_conserves():
    m = _net(bias=False)
    x = _x()
    r = LRP(m, rule="zero").attribute(x, T3)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xg).gather(1, T3[:, None]).sum(), xg)
    torch.testing.assert_close(r, x * g, rtol=1e-10, atol=1e-12)
    logit = m(x).gather(1, T3[:, None])[:, 0]
    for rule in ("zero", "epsilon"):  # Bach 2015 eq. 2: sum of relevance = f(x)
        s = LRP(m, rule=rule).attribute(x, T3).flatten(1).sum(1)
        torch.testing.assert_close(s, logit, rtol=1e-5, atol=1e-5)
    s32 = LRP(m.float(), rule="epsilon").attribute(x.float(), T3).flatten(1).sum(1)
    torch.testing.assert_close(s32, logit.float(), rtol=1e-5, atol=1e-5)


def _captum_lrp(m: Net, x: torch.Tensor, t: torch.Tensor, conv_rule) -> torch.Tensor:
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for layer in m.modules():
        if isinstance(layer, nn.Conv2d):
            layer.rule = conv_rule()
        elif isinstance(layer, nn.Linear):
            layer.rule = EpsilonRule(epsilon=1e-6)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            layer.rule = EpsilonRule(epsilon=1e-14)  # ours: pooling by the exact z-rule
    return CaptumLRP(m).attribute(x.clone().requires_grad_(True), target=t).detach()


@pytest.mark.parametrize("name", ["epsilon", "gamma", "alpha1_beta0"])
def test_equals_captum_lrp(name):
    pytest.importorskip("captum")
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    # captum's gamma / alpha1-beta0 keep the unmodified bias in the denominator (zennit and
    # Montavon modify it too): compare them on bias-free convolutions
    m = _net(bias=name == "epsilon")
    x = _x()
    conv = {"epsilon": lambda: EpsilonRule(epsilon=1e-6), "gamma": GammaRule, "alpha1_beta0": Alpha1_Beta0_Rule}[name]
    ref = _captum_lrp(m, x, T3, conv)
    ours = LRP(m, rule=name, stabilizer=1e-9, epsilon=1e-6)
    ours.composite = type(ours.composite)(first=None, conv=name, dense="epsilon")
    torch.testing.assert_close(ours.attribute(x, T3), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


# --------------------------------------------------------------------------- matrix-form reference

def _dense(conv: nn.Conv2d, shape: tuple, ones: bool = False) -> torch.Tensor:
    """The convolution (no bias) as a matrix (out, in) over flattened (C, H, W)."""
    w = torch.ones_like(conv.weight) if ones else conv.weight

    def f(v: torch.Tensor) -> torch.Tensor:
        return conv._conv_forward(v.view(1, *shape), w, None).flatten()

    return torch.autograd.functional.jacobian(f, torch.zeros(int(torch.tensor(shape).prod()), dtype=D))


def _ref_rule(a, wmat, r_out, kind, *, eps=1e-6, gamma=0.25, lo=None, hi=None, flat=None):
    """Montavon 2019 in matrix form for non-negative activations (hidden layers, bias 0) or the
    input rules: R_i = sum_j q_ij / sum_i' q_i'j R_j."""
    if kind == "epsilon":
        q = a[None] * wmat
    elif kind == "gamma":
        q = a[None] * (wmat + gamma * wmat.clamp(min=0))
    elif kind == "plus":
        q = a[None] * wmat.clamp(min=0)
    elif kind == "zbox":
        q = a[None] * wmat - lo[None] * wmat.clamp(min=0) - hi[None] * wmat.clamp(max=0)
    else:  # flat
        q = flat
    den = q.sum(1, keepdim=True)
    den = den + eps * torch.where(den >= 0, 1.0, -1.0)
    return (q / den * r_out[:, None]).sum(0)


class Tiny(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 6 * 6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(self.norm(x))))).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_composites_equal_the_matrix_form_of_the_rules(composite):
    torch.manual_seed(3)
    norm = Normalize([0.4, 0.5], [0.2, 0.3]).to(D)
    m = Tiny(norm).to(D).eval()
    x = torch.rand(1, 2, 6, 6, dtype=D)
    t = 1
    xn = norm(x)[0].flatten()
    a1 = torch.relu(m.c1(norm(x)))[0].flatten()
    a2 = torch.relu(m.c2(torch.relu(m.c1(norm(x)))))[0].flatten()
    z3 = m.fc.weight[t] * a2
    r2 = z3 / (z3.sum() + 1e-6 * torch.sign(z3.sum())) * z3.sum()  # epsilon on the dense layer
    w2 = _dense(m.c2, (3, 6, 6))
    r1 = _ref_rule(a1, w2, r2, "plus" if composite == "epsilon_plus_flat" else "gamma")
    w1 = _dense(m.c1, (2, 6, 6))
    if composite == "epsilon_plus_flat":
        r0 = _ref_rule(xn, w1, r1, "flat", flat=_dense(m.c1, (2, 6, 6), ones=True))
    else:  # z^B with the pixel bounds 0 and 1 mapped through Normalize
        lo = norm(torch.zeros_like(x))[0].flatten()
        hi = norm(torch.ones_like(x))[0].flatten()
        r0 = _ref_rule(xn, w1, r1, "zbox", lo=lo, hi=hi)
    ours = LRP(m, composite=composite).attribute(x, t)
    torch.testing.assert_close(ours.flatten(), r0, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- BatchNorm canonizer

def _random_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(5)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return m.eval()


def test_batchnorm_merge_keeps_outputs_and_restores_resnet8():
    torch.manual_seed(0)
    m = _random_bn(create("resnet8", num_classes=3, width=4))
    x = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    params = dict(m.named_parameters())
    pairs, logits = merge_pairs(m, x)
    assert len(pairs) == 9  # stem + 2 in each of the 3 blocks + 2 projection shortcuts
    with merge_batchnorm(pairs):
        with torch.no_grad():
            merged = m(x)
        assert all(lin.bias is not None for lin, _ in pairs)
    torch.testing.assert_close(merged, logits, rtol=1e-5, atol=1e-5)
    assert dict(m.named_parameters()).keys() == params.keys()
    assert all(lin.bias is None for lin, _ in pairs)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_canonized_lrp_equals_lrp_of_the_fused_model():
    torch.manual_seed(0)
    conv_bn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 3)).to(D)
    _random_bn(conv_bn)
    bn, conv = conv_bn[1], conv_bn[0]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).to(D)
    with torch.no_grad():
        fused[0].weight.copy_(conv.weight * s.view(-1, 1, 1, 1))
        fused[0].bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
        fused[3].load_state_dict(conv_bn[4].state_dict())
    x = _x(2)[:, :, :8, :8].contiguous()
    for comp in ("epsilon_plus_flat", "epsilon_gamma_box"):
        a = LRP(conv_bn.eval(), composite=comp).attribute(x, torch.tensor([0, 2]))
        b = LRP(fused.eval(), composite=comp).attribute(x, torch.tensor([0, 2]))
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


class _Shared(nn.Module):
    """The conv's output feeds its BatchNorm and a skip: merging the BatchNorm would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.fc((torch.relu(self.bn(z)) + z).flatten(1))


def test_merge_that_would_change_outputs_is_refused_and_restored():
    torch.manual_seed(0)
    m = _random_bn(_Shared())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ModelError, match="differ"):
        LRP(m, rule="epsilon").attribute(x, 0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    r = LRP(m, rule="epsilon", canonize=False).attribute(x, 0)  # the BatchNorm as its own epsilon layer
    assert bool(torch.isfinite(r).all())


def test_zoo_models_run_and_keep_their_outputs():
    torch.manual_seed(0)
    for name, size in (("small-cnn", 16), ("resnet8", 16), ("densenet121", 32)):
        kw = {"width": 4} if name != "densenet121" else {}
        m = _random_bn(create(name, num_classes=3, **kw))
        x = torch.rand(1, 3, size, size)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        r = LRP(m, composite="epsilon_gamma_box").attribute(x, 1)  # raises if hooked logits differ
        assert r.shape == x.shape and bool(torch.isfinite(r).all()) and float(r.abs().sum()) > 0
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


# --------------------------------------------------------------------------- batching, targets, errors

def test_batch_equals_single_and_multi_target_stack():
    m = _net()
    x = _x()
    e = LRP(m, composite="epsilon_gamma_box")
    batch = e.attribute(x, T3)
    single = torch.cat([e.attribute(x[i:i + 1], int(T3[i])) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-10, atol=1e-12)
    tt = torch.tensor([[0, 1], [2, 3], [4, 0]])
    multi = e.attribute(x, tt)
    assert multi.shape == (3, 2, 3, 16, 16)
    for k in range(2):
        torch.testing.assert_close(multi[:, k], e.attribute(x, tt[:, k]), rtol=1e-10, atol=1e-12)
    pred = m(x).argmax(1)
    torch.testing.assert_close(e.attribute(x), e.attribute(x, pred))


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # the hooked (explaining) forward, after the BatchNorm merge
            raise RuntimeError("boom")
        return x


def test_model_restored_after_a_raising_call():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), _Boom(),
                      nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    _random_bn(m).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        LRP(m, composite="epsilon_plus_flat").attribute(torch.rand(2, 3, 8, 8), 0)
    assert m.training and m[0].bias is None
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(not mod._forward_hooks for mod in m.modules())
    assert all(p.requires_grad for p in m.parameters())


def test_registry_names_and_errors():
    m = _net()
    x = _x(1)
    for name in ("lrp", "lrp_epsilon", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box", "lrp_epsilon_alpha2_beta1"):
        assert issubclass(REGISTRY[name], LRP)
    torch.testing.assert_close(REGISTRY["lrp_epsilon"](m).attribute(x, 1), LRP(m, rule="epsilon").attribute(x, 1))
    torch.testing.assert_close(REGISTRY["lrp"](m).attribute(x, 1),
                               LRP(m, composite="epsilon_plus_flat").attribute(x, 1))
    with pytest.raises(ConfigError, match="composite"):
        LRP(m, composite="nope")
    with pytest.raises(ConfigError, match="first_rule"):
        LRP(m, rule="zbox")
    with pytest.raises(ConfigError, match="output"):
        LRP(m, output="softmax")
    with pytest.raises(ConfigError, match="alpha"):
        LRP(m, rule="alpha_beta", alpha=1.0, beta=1.0)


def test_equals_zennit_composites_if_it_imports():
    """zennit 0.5.1 (checked while writing this test with its torchvision import stubbed: max |diff|
    1e-15 relative). zennit's MergeBatchNorm keeps the BatchNorm's eps in the emptied layer, which
    scales its canonized forward by (1 + eps)^-1/2 per layer; eps = 0 here removes that quirk."""
    try:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat
    except Exception:  # zennit 0.5.1 imports torchvision at import time (RuntimeError without it)
        pytest.skip("zennit does not import here")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                      nn.Linear(6 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 5)).to(D)
    _random_bn(m)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = 0.0
    x = _x()
    with torch.no_grad():
        r_out = torch.eye(5, dtype=D)[T3] * m(x).gather(1, T3[:, None])  # relevance = the target logit
    for name, comp in (("epsilon_plus_flat", EpsilonPlusFlat), ("epsilon_alpha2_beta1", EpsilonAlpha2Beta1),
                       ("epsilon_gamma_box", lambda **k: EpsilonGammaBox(low=0.0, high=1.0, **k))):
        with Gradient(model=m, composite=comp(canonizers=[SequentialMergeBatchNorm()])) as attributor:
            _, ref = attributor(x.clone(), r_out)
        ours = LRP(m, composite=name).attribute(x, T3)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8 * float(ref.abs().max()))
