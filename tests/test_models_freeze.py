"""freeze / unfreeze: the right parameters, BatchNorm statistics untouched in training mode,
full restoration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import medxai.models as M
from medxai.errors import ConfigError


def _bn_stats(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if "running" in k}


def test_freeze_until_stage_keeps_bn_statistics() -> None:
    torch.manual_seed(0)
    m = M.create("resnet8", 3)
    assert m.stages == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    frozen = M.freeze(m, until="layer2")
    assert set(frozen) == {n for n, _ in m.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert all(p.requires_grad == (n not in frozen) for n, p in m.named_parameters())
    m.train()
    assert m.training and not m.bn1.training and not m.layer1[0].bn2.training and m.layer2[0].bn1.training
    before = _bn_stats(m)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    params_before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = nn.functional.cross_entropy(m(torch.rand(8, 3, 16, 16)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    loss.backward()
    opt.step()
    after = _bn_stats(m)
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == k.startswith(("bn1.", "layer1.")), k
    for n, p in m.named_parameters():
        assert torch.equal(p, params_before[n]) == (n in frozen), n
    # eval()/train() again: still pinned; a deep copy keeps the behaviour
    m.eval().train()
    assert not m.bn1.training
    c = copy.deepcopy(m).train()
    assert not c.bn1.training and c.layer3[0].bn1.training
    # unfreeze restores everything
    M.unfreeze(m)
    assert all(p.requires_grad for p in m.parameters()) and m.bn1.training and "train" not in m.bn1.__dict__
    m(torch.rand(4, 3, 16, 16))
    assert not torch.equal(_bn_stats(m)["bn1.running_mean"], after["bn1.running_mean"])


def test_until_as_index_equals_name_and_bounds() -> None:
    a, b = M.create("resnet8", 2), M.create("resnet8", 2)
    assert M.freeze(a, until=3) == M.freeze(b, until="layer2")
    assert M.freeze(M.create("resnet8", 2), until=0) == []
    for bad in ({"until": "layer9"}, {"until": 7}, {"until": -1}, {}, {"until": 1, "layers": 2}, {"layers": 99}):
        with pytest.raises(ConfigError):
            M.freeze(M.create("resnet8", 2), **bad)


def test_freeze_first_53_parameterised_layers_of_mobilenet() -> None:
    m = M.create("mobilenet-v2", 2)
    layers = M.parameterised_layers(m)
    assert len(layers) == 105  # 52 conv + 52 BatchNorm + 1 linear
    frozen = M.freeze(m, layers=53)
    expected = {f"{n}.{p}" for n in layers[:53] for p, _ in m.get_submodule(n).named_parameters()}
    assert set(frozen) == expected
    # stem 2 layers, block 1 (t=1) 4, blocks 2..17 six each: layer 53 = 2 + 4 + 6*7 + 5th of block 9
    assert layers[52] == "features.9.conv.2"  # (block 9's 1x1 projection conv; its BN stays trainable)
    m.train()
    pinned = [n for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d) and not mod.training]
    assert pinned and all(n in layers[:53] for n in pinned)
    assert len(pinned) == sum(isinstance(m.get_submodule(n), nn.BatchNorm2d) for n in layers[:53])


def test_vit_tokens_freeze_with_the_first_stage() -> None:
    m = M.create("vit-ti4", 2, img_size=16, depth=3, reg_tokens=1)
    frozen = M.freeze(m, until="blocks.2")
    assert {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight"} <= set(frozen)
    assert any(n.startswith("blocks.1.") for n in frozen) and not any(n.startswith("blocks.2.") for n in frozen)
    assert m.head.weight.requires_grad and m.norm.weight.requires_grad
    M.unfreeze(m)
    assert all(p.requires_grad for p in m.parameters())


def test_unfreeze_keeps_parameters_frozen_by_the_user() -> None:
    m = M.create("resnet8", 2)
    m.fc.weight.requires_grad_(False)
    M.freeze(m, until=6)
    M.unfreeze(m)
    assert not m.fc.weight.requires_grad and m.fc.bias.requires_grad and m.conv1.weight.requires_grad
