"""``combined:NAME+NAME+...``: several backbones without their heads, pooled features
concatenated, one shared linear classifier (the CheXpert study's multi-backbone model).
"""

from __future__ import annotations

import torch
from torch import nn

from medxai.errors import ConfigError
from medxai.models._common import set_description
from medxai.models.registry import REGISTRY

__all__ = ["Combined"]


class Combined(nn.Module):
    """(B, C, H, W) in [0, 1] -> normalize -> each backbone -> pooled features (B, F_i) ->
    concat (B, sum F_i) -> dropout -> ``head`` Linear -> logits (B, K).
    """

    def __init__(self, normalize: nn.Module, backbones: list[nn.Module], num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbones = nn.ModuleList(backbones)
        self.feature_dim = sum(int(b.feature_dim) for b in backbones)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return self.head(self.dropout(torch.cat([b(x) for b in self.backbones], dim=1)))


def build_combined(spec: str, num_classes: int, in_chans: int, normalize: nn.Module,
                   dropout: float = 0.0, backbone_kw: dict | None = None) -> nn.Module:
    """``spec`` = "densenet121+efficientnet-b0+..."; ``backbone_kw`` = {name: {kw}} per backbone."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if len(names) < 2:
        raise ConfigError(f"combined: needs at least two backbones joined by '+', got {spec!r}")
    backbone_kw = backbone_kw or {}
    unknown = set(backbone_kw) - set(names)
    if unknown:
        raise ConfigError(f"combined: backbone_kw names {sorted(unknown)} that are not in {names}")
    backbones = []
    for n in names:
        if n.startswith("combined:"):
            raise ConfigError("combined: backbones cannot themselves be combined models")
        b = REGISTRY.get(n)(0, in_chans, nn.Identity(), **backbone_kw.get(n, {}))
        b.medxai_arch = n
        backbones.append(b)
    m = Combined(normalize, backbones, num_classes, dropout)
    stages, inputs = [], []
    for i, b in enumerate(backbones):
        stages += [f"backbones.{i}.{s}" for s in b.stages if s not in b.medxai_head]
        inputs += [f"backbones.{i}.{s}" for s in b.medxai_input_layers]
    set_description(m, family="combined", cam_layer=f"backbones.0.{backbones[0].default_cam_layer}",
                    stages=[*stages, "head"], head=["head"], input_layer=inputs, feature_dim=m.feature_dim)
    return m
