"""Pieces every architecture shares: the input ``Normalize`` layer and the model description.

Every model medxai builds takes [0, 1] images ``(B, C, H, W)`` and carries its own mean/std
normalisation as its first child module ``normalize`` (non-persistent buffers, so checkpoints
of other libraries load without it and ``create(**model.medxai_config)`` rebuilds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medxai.errors import ConfigError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# one-channel (and any channel count other than 3): the mean of the ImageNet means / stds
GRAY_MEAN = sum(IMAGENET_MEAN) / 3.0
GRAY_STD = sum(IMAGENET_STD) / 3.0

NormalizeSpec = str | tuple | list | None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean``/``std`` are (1, C, 1, 1) non-persistent buffers.

    Input: (B, C, H, W) in [0, 1] (not validated here: SmoothGrad and attacks pass noisy copies).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ConfigError(f"normalize: mean has {mean_t.numel()} values but std has {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ConfigError(f"normalize: std must be > 0, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise InputError(
                f"model expects images (B, {self.mean.shape[1]}, H, W) in [0, 1], got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, " \
               f"std={[round(v, 4) for v in self.std.flatten().tolist()]}"


def _channels(values: Any, in_chans: int, what: str) -> list[float]:
    if isinstance(values, (int, float)):
        values = [values]
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * in_chans
    if len(vals) != in_chans:
        raise ConfigError(f"normalize: {what} has {len(vals)} values for {in_chans} input channels")
    return vals


def resolve_normalize(normalize: NormalizeSpec, in_chans: int) -> tuple[nn.Module, Any]:
    """Turn ``normalize`` into (module, JSON form).

    ``"imagenet"``: ImageNet mean/std for 3 channels; for any other channel count each channel
    gets the mean of the three ImageNet means/stds (0.449, 0.226). ``"none"``/None: identity.
    ``(mean, std)``: floats or one value per channel.
    """
    if normalize is None or (isinstance(normalize, str) and normalize.lower() == "none"):
        return nn.Identity(), "none"
    if isinstance(normalize, str):
        if normalize.lower() != "imagenet":
            raise ConfigError(f"normalize must be 'imagenet', 'none' or (mean, std), got {normalize!r}")
        if in_chans == 3:
            return Normalize(IMAGENET_MEAN, IMAGENET_STD), "imagenet"
        return Normalize([GRAY_MEAN] * in_chans, [GRAY_STD] * in_chans), "imagenet"
    if isinstance(normalize, dict):
        normalize = (normalize.get("mean"), normalize.get("std"))
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise ConfigError(f"normalize must be 'imagenet', 'none' or (mean, std), got {normalize!r}")
    mean = _channels(normalize[0], in_chans, "mean")
    std = _channels(normalize[1], in_chans, "std")
    return Normalize(mean, std), [mean, std]


def hooks_unavailable(model: nn.Module) -> str | None:
    """Why forward hooks cannot be put on ``model``'s layers (None: they can): TorchScript modules
    refuse ``register_forward_hook``."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return "TorchScript modules do not support forward hooks (export the model with torch.export or ONNX instead)"
    return None


def no_inplace(model: nn.Module) -> nn.Module:
    """Switch off in-place activations (hooks and explanations need the layer outputs intact)."""
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return model


def move_first(model: nn.Module, name: str) -> None:
    """Make child ``name`` the first child (so ``normalize`` is the first layer in module order)."""
    mods = model._modules
    child = mods.pop(name)
    model._modules = {name: child, **mods}


class NormalizedInput:
    """Mixin for third-party architectures: ``forward(x) = super().forward(self.normalize(x))``."""

    normalize: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.normalize(x))  # type: ignore[misc]


def set_description(model: nn.Module, *, family: str, cam_layer: str, stages: list[str], head: list[str],
                    input_layer: str | list[str], feature_dim: int) -> nn.Module:
    """Attach what medxai needs to know about an architecture (used by load_weights, freeze, CAMs).

    ``family``: key-mapping family for checkpoints; ``cam_layer``: dotted name of the last layer
    with spatial output; ``stages``: ordered dotted names of stages/blocks; ``head``: classifier
    module names (dropped when the class count differs); ``input_layer``: the first conv(s) / patch
    projection (adapted to the input channel count); ``feature_dim``: pooled feature width.
    """
    model.medxai_family = family
    model.default_cam_layer = cam_layer
    model.stages = list(stages)
    model.medxai_head = list(head)
    model.medxai_input_layers = [input_layer] if isinstance(input_layer, str) else list(input_layer)
    model.feature_dim = int(feature_dim)
    return model
