"""``create(name, num_classes, in_chans=3, *, pretrained=None, normalize="imagenet", **kw)``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from medxai.errors import ConfigError
from medxai.models._common import NormalizeSpec, resolve_normalize
from medxai.models.cnn import ALWAYS_3D, VOLUME_MODELS, Normalize3d, SliceStack
from medxai.models.registry import REGISTRY
from medxai.models.weights import load_weights

__all__ = ["create", "list_models"]

_PREFIXED = ("combined:", "timm:", "torchvision:")


def list_models() -> list[str]:
    """Registered names; ``combined:A+B``, ``timm:NAME`` and ``torchvision:NAME`` are built on demand."""
    return REGISTRY.names()


def create(name: str, num_classes: int, in_chans: int = 3, *, pretrained: str | Path | Mapping | Sequence | None = None,
           normalize: NormalizeSpec = "imagenet", spatial_dims: int = 2, slices: int | None = None,
           **kw) -> nn.Module:
    """Build a classifier: (B, in_chans, H, W) images in [0, 1] -> logits (B, num_classes).

    Volumes: ``spatial_dims=3`` builds the 3-D network ((B, in_chans, D, H, W) -> logits) for the
    names in ``cnn.VOLUME_MODELS`` (MONAI ResNet-18/34/50, DenseNet-121, EfficientNet-B0..B7,
    small-cnn; ``small-cnn3d`` is always 3-D); its first layer normalises per channel like the
    2-D one (``cnn.Normalize3d``). 2.5-D: ``slices=D`` builds the 2-D network for
    ``in_chans * D`` input channels (normalised per channel as any 2-D model) inside
    ``cnn.SliceStack``, which takes (B, in_chans, D, H, W) and stacks the slices as channels.

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
    volume = _volume_kind(name, spatial_dims, slices)
    net_chans = in_chans * slices if slices is not None else in_chans
    norm, norm_json = resolve_normalize(normalize, net_chans)
    if volume == 3:
        norm = Normalize3d.like(norm)
        if name not in ALWAYS_3D:
            kw["spatial_dims"] = 3

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
        model = REGISTRY.get(name)(num_classes, net_chans, norm, **kw)
    if slices is not None:
        model = _slice_stack(model, slices)
        kw = {"slices": slices, **kw}
    model.medxai_arch = name
    model.spatial_dims = 3 if volume else 2
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


def _volume_kind(name: str, spatial_dims: int, slices: int | None) -> int:
    """0 (2-D images), 3 (a 3-D network) or 25 (2.5-D slices as channels); checks the options."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if slices is not None:
        if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
            raise ConfigError(f"slices must be an int >= 1 (the volume depth D), got {slices!r}")
        if spatial_dims == 3 or name in ALWAYS_3D:
            raise ConfigError(f"slices (2.5-D) stacks slices into a 2-D network; {name!r} with spatial_dims=3 "
                              "is a 3-D network already")
        return 25
    if name in ALWAYS_3D:
        return 3
    if spatial_dims == 3:
        if name not in VOLUME_MODELS:
            raise ConfigError(f"model {name!r} has no 3-D variant; spatial_dims=3 works for {list(VOLUME_MODELS)}")
        return 3
    return 0


def _slice_stack(net: nn.Module, slices: int) -> nn.Module:
    """``SliceStack(net, slices)`` carrying ``net``'s description with the names under ``net.``."""
    m = SliceStack(net, slices)
    pre = lambda names: [f"net.{n}" for n in names]
    m.medxai_family = getattr(net, "medxai_family", None)
    if getattr(net, "default_cam_layer", None):
        m.default_cam_layer = f"net.{net.default_cam_layer}"
    m.stages = pre(getattr(net, "stages", []))
    m.medxai_head = pre(getattr(net, "medxai_head", []))
    m.medxai_input_layers = pre(getattr(net, "medxai_input_layers", []))
    m.feature_dim = getattr(net, "feature_dim", None)
    return m
