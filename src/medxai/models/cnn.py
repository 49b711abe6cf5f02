"""Convolutional networks: ResNet, DenseNet-121 and EfficientNet-B0..B7 on MONAI's networks (2-D,
or 3-D with ``spatial_dims=3``), and tiny CPU networks (``small-cnn``, its 3-D twin ``small-cnn3d``,
``resnet8``) for demos and tests. ``SliceStack`` runs a 2-D network on a volume's slices as
input channels (2.5-D).
"""

from __future__ import annotations

import torch
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.models._common import Normalize, move_first, no_inplace, set_description
from medxai.models.registry import REGISTRY

__all__ = ["VOLUME_MODELS", "Normalize3d", "ResNet8", "SliceStack", "SmallCNN"]

#: models that build with ``spatial_dims=3`` (``create(name, ..., spatial_dims=3)``)
VOLUME_MODELS = ("resnet18", "resnet34", "resnet50", "densenet121", *(f"efficientnet-b{i}" for i in range(8)),
                 "small-cnn", "small-cnn3d")
#: models that are 3-D whatever ``spatial_dims`` says
ALWAYS_3D = ("small-cnn3d",)


class Normalize3d(Normalize):
    """``(x - mean) / std`` per channel of volumes (B, C, D, H, W) in [0, 1]; same buffers as ``Normalize``."""

    @classmethod
    def like(cls, norm: nn.Module) -> nn.Module:
        """The 3-D twin of a 2-D ``Normalize`` (an identity stays an identity)."""
        if not isinstance(norm, Normalize):
            return norm
        return cls(norm.mean.flatten().tolist(), norm.std.flatten().tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.mean.shape[1]:
            raise InputError(
                f"model expects volumes (B, {self.mean.shape[1]}, D, H, W) in [0, 1], got shape {tuple(x.shape)}")
        return (x - self.mean[..., None]) / self.std[..., None]


class SliceStack(nn.Module):
    """2.5-D: a 2-D network over a volume's D slices taken as input channels.

    ``forward(x)``: (B, C, D, H, W) -> ``net(x.reshape(B, C * D, H, W))``, channel index
    c * D + d; ``net`` was built for ``C * D`` input channels (its first layer normalises them).
    """

    def __init__(self, net: nn.Module, depth: int) -> None:
        super().__init__()
        self.net, self.depth = net, int(depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != self.depth:
            raise InputError(f"this 2.5-D model expects volumes (B, C, {self.depth}, H, W), got {tuple(x.shape)}")
        return self.net(x.flatten(1, 2))


def _call(ctor, name: str, **kw) -> nn.Module:
    try:
        return ctor(**kw)
    except TypeError as err:  # an unknown keyword from a config
        raise ConfigError(f"model {name!r}: {err}") from None


# --------------------------------------------------------------------------- MONAI ResNet
_RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
            "resnet50": ("bottleneck", [3, 4, 6, 3])}


def _resnet(name: str, num_classes: int, in_chans: int, normalize: nn.Module, spatial_dims: int = 2,
            **kw) -> nn.Module:
    from medxai.models._monai import MonaiResNet

    block, layers = _RESNETS[name]
    # torchvision layout: 7x7 stride-2 stem, max-pool, projection shortcut (type B) without bias
    m = _call(MonaiResNet, name, normalize=normalize, block=block, layers=layers,
              block_inplanes=[64, 128, 256, 512], spatial_dims=spatial_dims, n_input_channels=in_chans,
              conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
              num_classes=max(num_classes, 1), **kw)
    feat = m.fc.in_features
    if num_classes == 0:
        m.fc = nn.Identity()
    return set_description(no_inplace(m), family="resnet", cam_layer="layer4",
                           stages=["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"],
                           head=["fc"], input_layer="conv1", feature_dim=feat)


for _n in _RESNETS:
    REGISTRY.add(_n, lambda num_classes, in_chans, normalize, _n=_n, **kw:
                 _resnet(_n, num_classes, in_chans, normalize, **kw))


# --------------------------------------------------------------------------- MONAI DenseNet-121
@REGISTRY.register("densenet121")
def densenet121(num_classes: int, in_chans: int, normalize: nn.Module, spatial_dims: int = 2, **kw) -> nn.Module:
    """DenseNet-121 (Huang 2017): growth 32, blocks (6, 12, 24, 16), 7,978,856 params at 1000 classes (2-D)."""
    from medxai.models._monai import MonaiDenseNet

    m = _call(MonaiDenseNet, "densenet121", normalize=normalize, spatial_dims=spatial_dims, in_channels=in_chans,
              out_channels=max(num_classes, 1), init_features=64, growth_rate=32,
              block_config=(6, 12, 24, 16), **kw)
    feat = m.class_layers.out.in_features
    if num_classes == 0:
        m.class_layers.out = nn.Identity()
    f = "features."
    stages = [f + "conv0", f + "norm0"]
    for i in range(1, 5):
        stages.append(f"{f}denseblock{i}")
        if i < 4:
            stages.append(f"{f}transition{i}")
    stages += [f + "norm5", "class_layers"]
    return set_description(no_inplace(m), family="densenet", cam_layer="features.norm5", stages=stages,
                           head=["class_layers.out"], input_layer="features.conv0", feature_dim=feat)


# --------------------------------------------------------------------------- MONAI EfficientNet
def _efficientnet(variant: str, num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    from medxai.models._monai import MonaiEfficientNet

    m = _call(MonaiEfficientNet, variant, normalize=normalize, model_name=variant, in_channels=in_chans,
              num_classes=max(num_classes, 1), **kw)
    feat = m._fc.in_features
    if num_classes == 0:
        m._fc = nn.Identity()
    stages = ["_conv_stem", "_bn0"] + [f"_blocks.{i}" for i in range(len(m._blocks))] + \
             ["_conv_head", "_bn1", "_fc"]
    return set_description(no_inplace(m), family="efficientnet", cam_layer="_bn1", stages=stages,
                           head=["_fc"], input_layer="_conv_stem", feature_dim=feat)


for _b in range(8):
    REGISTRY.add(f"efficientnet-b{_b}", lambda num_classes, in_chans, normalize, _v=f"efficientnet-b{_b}", **kw:
                 _efficientnet(_v, num_classes, in_chans, normalize, **kw))


# --------------------------------------------------------------------------- tiny CPU networks
_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
           3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)}


def _conv_bn(cin: int, cout: int, stride: int = 1, spatial_dims: int = 2) -> nn.Sequential:
    conv, bn = _LAYERS[spatial_dims][:2]
    return nn.Sequential(conv(cin, cout, 3, stride, 1, bias=False), bn(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (width w, 2w, 4w; 2x2 max-pool after the first two), global
    average pooling, a linear classifier. ~24k parameters at width 16: trains in seconds on CPU.
    ``spatial_dims=3``: the same network with 3x3x3 convolutions and 2x2x2 pools, for volumes.
    """

    def __init__(self, normalize: nn.Module, num_classes: int, in_chans: int = 3, width: int = 16,
                 dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in _LAYERS:
            raise ConfigError(f"small-cnn: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        _, _, maxpool, avgpool = _LAYERS[spatial_dims]
        self.normalize = normalize
        self.features = nn.Sequential()
        self.features.add_module("block1", _conv_bn(in_chans, width, spatial_dims=spatial_dims))
        self.features.add_module("pool1", maxpool(2))
        self.features.add_module("block2", _conv_bn(width, 2 * width, spatial_dims=spatial_dims))
        self.features.add_module("pool2", maxpool(2))
        self.features.add_module("block3", _conv_bn(2 * width, 4 * width, spatial_dims=spatial_dims))
        self.pool = avgpool(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


@REGISTRY.register("small-cnn")
def small_cnn(num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    m = _call(SmallCNN, "small-cnn", normalize=normalize, num_classes=num_classes, in_chans=in_chans, **kw)
    return set_description(m, family="small-cnn", cam_layer="features.block3",
                           stages=["features.block1", "features.block2", "features.block3", "classifier"],
                           head=["classifier"], input_layer="features.block1.0",
                           feature_dim=4 * kw.get("width", 16))


@REGISTRY.register("small-cnn3d")
def small_cnn3d(num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    """``small-cnn`` with ``spatial_dims=3``: volumes (B, C, D, H, W); CAM layer ``features.block3``."""
    kw["spatial_dims"] = 3
    return small_cnn(num_classes, in_chans, normalize, **kw)


class BasicBlock(nn.Module):
    """He 2016 basic residual block (torchvision names: conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8 (He 2016, sec. 4.2 with n=1): 3x3 stem, three stages of one basic
    block (width w, 2w, 4w; stride 1, 2, 2), global average pooling, linear classifier.
    """

    def __init__(self, normalize: nn.Module, num_classes: int, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@REGISTRY.register("resnet8")
def resnet8(num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    m = _call(ResNet8, "resnet8", normalize=normalize, num_classes=num_classes, in_chans=in_chans, **kw)
    move_first(m, "normalize")
    return set_description(m, family="resnet8", cam_layer="layer3",
                           stages=["conv1", "bn1", "layer1", "layer2", "layer3", "fc"],
                           head=["fc"], input_layer="conv1", feature_dim=4 * kw.get("width", 16))
