"""``create(name, num_classes, in_chans=3, *, pretrained=None, normalize="imagenet", **kw)``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from medxai.errors import ConfigError
from medxai.models._common import NormalizeSpec, resolve_normalize
from medxai.models.registry import REGISTRY
from medxai.models.weights import load_weights

__all__ = ["create", "list_models"]

_PREFIXED = ("combined:", "timm:", "torchvision:")


def list_models() -> list[str]:
    """Registered names; ``combined:A+B``, ``timm:NAME`` and ``torchvision:NAME`` are built on demand."""
    return REGISTRY.names()


def create(name: str, num_classes: int, in_chans: int = 3, *, pretrained: str | Path | Mapping | Sequence | None = None,
           normalize: NormalizeSpec = "imagenet", **kw) -> nn.Module:
    """Build a classifier: (B, in_chans, H, W) images in [0, 1] -> logits (B, num_classes).

    The first layer is ``normalize`` (``"imagenet"``, ``"none"`` or ``(mean, std)``; one channel
    uses the mean of the ImageNet means/stds). Binary tasks use 2 logits. ``num_classes=0``
    returns pooled features (``model.feature_dim`` wide) instead of logits.
    ``pretrained``: a checkpoint path or state dict loaded by ``load_weights`` (for ``combined:``
    also a list with one entry, or None, per backbone); its report is ``model.medxai_load_report``.
    ``kw`` go to the architecture (e.g. ``img_size``, ``depth``, ``drop_path_rate`` for ViTs) and must
    be JSON-serialisable: ``create(**model.medxai_config)`` rebuilds the same architecture.

    The model carries ``medxai_config``, ``default_cam_layer`` (dotted name of the last spatial
    layer; a ViT's last ``norm1``) and ``stages`` (ordered dotted names, for ``freeze``).
    """
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes must be an int >= 1 (0: features only), got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans must be an int >= 1, got {in_chans!r}")
    try:
        kw = json.loads(json.dumps(kw))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {name!r}: keyword arguments must be JSON-serialisable ({err})") from None
    norm, norm_json = resolve_normalize(normalize, in_chans)

    if name.startswith("combined:"):
        from medxai.models.combined import build_combined

        model = build_combined(name[len("combined:"):], num_classes, in_chans, norm, **kw)
    elif name.startswith("timm:"):
        from medxai.models.adapters import build_timm

        model = build_timm(name[len("timm:"):], num_classes, in_chans, norm, **kw)
    elif name.startswith("torchvision:"):
        from medxai.models.adapters import build_torchvision

        model = build_torchvision(name[len("torchvision:"):], num_classes, in_chans, norm, **kw)
    else:
        model = REGISTRY.get(name)(num_classes, in_chans, norm, **kw)
    model.medxai_arch = name
    model.medxai_config = {"name": name, "num_classes": num_classes, "in_chans": in_chans,
                           "normalize": norm_json, **kw}

    if pretrained is not None:
        if name.startswith("combined:") and isinstance(pretrained, Sequence) and not isinstance(pretrained, str):
            if len(pretrained) != len(model.backbones):
                raise ConfigError(f"pretrained: {len(pretrained)} entries for {len(model.backbones)} backbones")
            model.medxai_load_report = [None if p is None else load_weights(b, p)
                                        for b, p in zip(model.backbones, pretrained, strict=True)]
        else:
            model.medxai_load_report = load_weights(model, pretrained)
    return model
