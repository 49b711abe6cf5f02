"""MONAI 2-D and 3-D networks (``spatial_dims``) with the input normalisation as their first layer
(imported lazily: MONAI takes ~2 s to import).

Parameter names equal torchvision's for ResNet; DenseNet and EfficientNet keep MONAI's names
(``load_weights`` maps torchvision / lukemelas names onto them).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DenseNet, EfficientNetBN, ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

from medxai.models._common import NormalizedInput, move_first


class BasicBlock(ResNetBlock):
    """MONAI's basic block with an out-of-place residual add (MONAI's ``out += residual`` would
    overwrite the output of ``bn2`` that a hook may have captured)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class Bottleneck(ResNetBottleneck):
    """MONAI's bottleneck (stride on the 3x3 conv, as torchvision) with an out-of-place residual add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class MonaiResNet(NormalizedInput, ResNet):
    """torchvision-layout ResNet (7x7/2 stem, max-pool, 1x1 conv + BN projection without bias)."""

    def __init__(self, normalize: nn.Module, block: str, **kw) -> None:
        super().__init__(block=BasicBlock if block == "basic" else Bottleneck, **kw)
        self.normalize = normalize
        move_first(self, "normalize")


class MonaiDenseNet(NormalizedInput, DenseNet):
    """MONAI DenseNet (torchvision structure; ``denselayerN.layers.*`` and ``class_layers.out`` names)."""

    def __init__(self, normalize: nn.Module, **kw) -> None:
        super().__init__(**kw)
        self.normalize = normalize
        move_first(self, "normalize")


class MonaiEfficientNet(NormalizedInput, EfficientNetBN):
    """MONAI EfficientNet-B0..B7 (lukemelas layout with blocks nested per stage: ``_blocks.S.I``).

    TF "same" padding computed for the architecture's nominal image size (static, as MONAI).
    Plain swish (``x * sigmoid(x)``) instead of MONAI's memory-efficient custom autograd function,
    so that higher-order gradients and hooks behave like any other layer.
    """

    def __init__(self, normalize: nn.Module, model_name: str, spatial_dims: int = 2, **kw) -> None:
        super().__init__(model_name, pretrained=False, spatial_dims=spatial_dims, **kw)
        self.set_swish(memory_efficient=False)
        self.normalize = normalize
        move_first(self, "normalize")
