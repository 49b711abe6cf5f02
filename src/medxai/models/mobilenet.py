"""MobileNetV2 (Sandler 2018) in torchvision's parameter-name layout (``features.N...``,
``classifier.1``), so torchvision checkpoints load as they are. 3,504,872 parameters at 1000 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from medxai.models._common import set_description
from medxai.models.registry import REGISTRY

__all__ = ["MobileNetV2"]

# t (expansion), c (channels), n (repeats), s (first stride): Sandler 2018, table 2
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))


def _divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """1x1 expansion (if t > 1), 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu6(cin, hidden, k=1))
        layers += [_conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2: ``features`` (stem, 17 inverted residuals, 1x1 conv to 1280), global average
    pooling, ``classifier`` = (Dropout, Linear). Input (B, C, H, W) in [0, 1] -> logits (B, K).
    """

    def __init__(self, normalize: nn.Module, num_classes: int = 1000, in_chans: int = 3,
                 width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        self.normalize = normalize
        cin = _divisible(32 * width_mult)
        self.last_channel = _divisible(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [_conv_bn_relu6(in_chans, cin, stride=2)]
        for t, c, n, s in _SETTING:
            cout = _divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(_conv_bn_relu6(cin, self.last_channel, k=1))
        self.features = nn.Sequential(*feats)
        head = nn.Linear(self.last_channel, num_classes) if num_classes else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout), head)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


@REGISTRY.register("mobilenet-v2")
def mobilenet_v2(num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    from medxai.models.cnn import _call

    m = _call(MobileNetV2, "mobilenet-v2", normalize=normalize, num_classes=num_classes, in_chans=in_chans, **kw)
    n = len(m.features)
    return set_description(m, family="mobilenet_v2", cam_layer=f"features.{n - 1}",
                           stages=[f"features.{i}" for i in range(n)] + ["classifier"],
                           head=["classifier.1"], input_layer="features.0.0", feature_dim=m.last_channel)
