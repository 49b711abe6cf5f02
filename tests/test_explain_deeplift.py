"""DeepLIFT, rescale rule (medxai.explain.deeplift): captum 0.9.0's DeepLift, summation-to-delta
(Shrikumar 2017 eq. 1), batching, targets, restoration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain import REGISTRY
from medxai.explain.deeplift import DeepLift
from medxai.models import create

D = torch.float64
T3 = torch.tensor([0, 2, 4])


class Net(nn.Module):
    """ReLU CNN: conv-relu-pool-conv-BN-relu-avgpool-linear (``pool``: avg or max)."""

    def __init__(self, pool: str = "avg") -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.p1 = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
        self.c2, self.b2, self.r2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()
        self.p2 = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.p1(self.r1(self.c1(x)))
        return self.fc(self.p2(self.r2(self.b2(self.c2(h)))).flatten(1))


def _net(pool: str = "avg", dtype=D) -> Net:
    torch.manual_seed(0)
    m = Net(pool).to(dtype).eval()
    with torch.no_grad():
        m.b2.running_mean.uniform_(-0.2, 0.2)
        m.b2.running_var.uniform_(0.5, 2.0)
    return m


def _x(b: int = 3, seed: int = 1, dtype=D) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _delta(m: nn.Module, x: torch.Tensor, base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (m(x) - m(base)).gather(1, t[:, None])[:, 0]


@pytest.mark.parametrize("given", [False, True])
def test_equals_captum_deeplift(given):
    pytest.importorskip("captum")
    from captum.attr import DeepLift as CaptumDeepLift

    m, x = _net(), _x()
    base = 0.3 * _x(seed=7) if given else torch.zeros_like(x)
    with pytest.warns(UserWarning):
        ref = CaptumDeepLift(m).attribute(x.clone().requires_grad_(True), baselines=base, target=T3).detach()
    ours = DeepLift(m).attribute(x, T3, baseline=base if given else None)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_summation_to_delta(pool):
    """Shrikumar 2017 eq. 1: sum of contributions = f(x) - f(x'), also through max-pooling (captum's
    maxpool rule; captum's own DeepLift leaves a delta of ~1e-2 on this net)."""
    for dtype, tol in ((D, 1e-10), (torch.float32, 1e-4)):
        m, x = _net(pool, dtype), _x(dtype=dtype)
        base = 0.5 * _x(seed=9, dtype=dtype)
        a, delta = DeepLift(m, baseline=base).attribute(x, T3, return_convergence_delta=True)
        torch.testing.assert_close(a.flatten(1).sum(1), _delta(m, x, base, T3), rtol=tol, atol=tol)
        assert delta.shape == (3,) and float(delta.abs().max()) < tol


def test_resnet8_summation_to_delta():
    torch.manual_seed(0)
    m = create("resnet8", num_classes=3, width=4).eval()
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0, 2])
    a = DeepLift(m).attribute(x, t)
    torch.testing.assert_close(a.flatten(1).sum(1), _delta(m, x, torch.zeros_like(x), t), rtol=1e-4, atol=1e-4)


def test_linear_model_is_input_minus_baseline_times_weight():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).to(D)
    x, base = _x(2), 0.5 * torch.ones(3, 16, 16, dtype=D)
    t = torch.tensor([1, 3])
    a = DeepLift(m).attribute(x, t, baseline=base)
    torch.testing.assert_close(a, (x - base) * m[1].weight[t].view(2, 3, 16, 16), rtol=1e-12, atol=1e-14)


def test_batch_equals_single_and_multi_target_stack():
    m, x = _net("max"), _x()
    e = DeepLift(m)
    batch = e.attribute(x, T3)
    single = torch.cat([e.attribute(x[i:i + 1], int(T3[i])) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-10, atol=1e-12)
    tt = torch.tensor([[0, 1], [2, 3], [4, 0]])
    multi = e.attribute(x, tt)
    assert multi.shape == (3, 2, 3, 16, 16)
    for k in range(2):
        torch.testing.assert_close(multi[:, k], e.attribute(x, tt[:, k]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e.attribute(x), e.attribute(x, m(x).argmax(1)))
    assert REGISTRY["deeplift"] is DeepLift


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # the explaining forward, after the reference forward
            raise RuntimeError("boom")
        return x


def test_model_restored_after_a_raising_call_and_errors():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _Boom(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        DeepLift(m).attribute(torch.rand(2, 3, 8, 8), 0)
    assert m.training and all(p.requires_grad for p in m.parameters())
    assert all(not mod._forward_hooks for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    net, x = _net(), _x()
    with pytest.raises(InputError, match="baseline"):
        DeepLift(net).attribute(x, T3, baseline=torch.zeros(2, 3, 16, 16, dtype=D))
    with pytest.raises(InputError, match="baseline"):
        DeepLift(net).attribute(x, T3, baseline=torch.full_like(x, float("nan")))
    with pytest.raises(ConfigError, match="output"):
        DeepLift(net, output="softmax")


def test_inplace_relus_equal_out_of_place():
    m = _net("max")
    x, base = _x(), 0.2 * _x(seed=4)
    ref = DeepLift(m).attribute(x, T3, baseline=base)
    m.r1.inplace = m.r2.inplace = True
    torch.testing.assert_close(DeepLift(m).attribute(x, T3, baseline=base), ref, rtol=1e-12, atol=1e-14)
    assert m.r1.inplace and m.r2.inplace
