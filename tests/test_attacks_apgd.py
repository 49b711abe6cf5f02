"""APGD (Croce & Hein 2020): optimal on a linear model, DLR formula, ball/range, attack list."""

import pytest
import torch
from torch import nn

from medxai.attacks import APGD, PGD, attack_list, dlr_loss
from medxai.errors import InputError


def test_dlr_formula_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    # sample 0: y is top: -(3 - 1) / (3 - 0); sample 1: -(0.5 - 2) / (2 - 0.5)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2 / 3, 1.0]))
    with pytest.raises(InputError, match="3 classes"):
        dlr_loss(torch.zeros(1, 2), torch.tensor([0]))


def test_attack_list_by_number_of_classes():
    assert attack_list(2) == ["apgd-ce"]
    assert attack_list(3) == attack_list(10) == ["apgd-ce", "apgd-dlr"]
    with pytest.raises(InputError):
        attack_list(1)


def test_linear_binary_model_success_is_the_analytic_optimum():
    # logits (0, w.x + b): the best L-inf attack within eps moves the margin by eps * ||w||_1
    torch.manual_seed(0)
    w = torch.randn(48)
    lin = nn.Linear(48, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(48), w]))
        lin.bias.copy_(torch.tensor([0.0, 0.0]))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(200, 3, 4, 4)  # the [0, 1] box does not bind at eps 0.05
    with torch.no_grad():
        margin = x.flatten(1) @ w
    y = (margin > 0).long()
    eps = 0.05
    expected = margin.abs() < eps * w.abs().sum()
    x_adv = APGD(model, eps, steps=20)(x, y)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert torch.equal(fooled, expected), (int(fooled.sum()), int(expected.sum()))
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_apgd_in_ball_range_and_not_weaker_than_pgd(norm, eps):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, 4)).eval()
    x = torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    for loss in ("ce", "dlr"):
        x_adv = APGD(model, eps, steps=25, norm=norm, loss=loss, seed=0)(x, y)
        d = (x_adv - x).flatten(1)
        size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5) and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    x_apgd = APGD(model, eps, steps=25, norm=norm, seed=0)(x, y)
    x_pgd = PGD(model, eps, steps=25, norm=norm, seed=0)(x, y)
    with torch.no_grad():
        s_apgd = float((model(x_apgd).argmax(1) != y).float().mean())
        s_pgd = float((model(x_pgd).argmax(1) != y).float().mean())
    assert s_apgd >= s_pgd - 1 / 64, (s_apgd, s_pgd)
    assert s_apgd > 0
