"""``timm:NAME`` and ``torchvision:NAME``: third-party models behind medxai's contract ([0, 1]
input, ``normalize`` first, logits out). The packages are imported only when such a name is built.

The Grad-CAM layer is found by one dry forward: the last module to finish whose output is a
(B, C, h, w) map with h*w > 1 (for ViTs: the last block's ``norm1``). Stages are the wrapped
network's top-level children.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from medxai.errors import ConfigError
from medxai.models._common import set_description

__all__ = ["Adapted", "build_timm", "build_torchvision"]


class Adapted(nn.Module):
    """``net(normalize(x))`` for a third-party network ``net``."""

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _import(package: str) -> object:
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ConfigError(f"model names '{package}:...' need the optional package {package!r} ({err})") from None


@torch.no_grad()
def _last_spatial_module(net: nn.Module, in_chans: int, size: int) -> str:
    order: list[str] = []
    hooks = []
    for name, mod in net.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, out, name=name: order.append(name)
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1 else None))
    was_training = net.training
    try:
        net.eval()
        net(torch.zeros(1, in_chans, size, size))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    if not order:
        raise ConfigError(f"{type(net).__name__}: no layer with spatial output found for Grad-CAM")
    return order[-1]


def _describe(model: Adapted, family: str, head: str, in_chans: int, size: int) -> nn.Module:
    net = model.net
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1"):
        cam = f"blocks.{len(blocks) - 1}.norm1"
    else:
        cam = _last_spatial_module(net, in_chans, size)
    first = next(n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    stages = [f"net.{n}" for n, c in net.named_children() if any(True for _ in c.parameters())]
    feat = getattr(net, "num_features", 0)
    return set_description(model, family=family, cam_layer=f"net.{cam}", stages=stages,
                           head=[f"net.{head}"] if head else [], input_layer=f"net.{first}", feature_dim=feat)


def build_timm(name: str, num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    timm = _import("timm")
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"timm:{name}: {err}") from None
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    head = cfg.get("classifier", "") if num_classes else ""
    return _describe(Adapted(normalize, net), "timm", head, in_chans, size)


def build_torchvision(name: str, num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    tv = _import("torchvision")
    try:
        net = tv.models.get_model(name, weights=None, num_classes=num_classes, **kw)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"torchvision:{name}: {err}") from None
    if in_chans != 3:  # replace the first convolution (fresh weights) by one with in_chans inputs
        cname, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
        new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None)
        parent, _, leaf = cname.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    for m in net.modules():  # hooks and explanations need layer outputs intact
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    size = 299 if "inception" in name else 224
    return _describe(Adapted(normalize, net), "torchvision", linears[-1] if linears else "", in_chans, size)
