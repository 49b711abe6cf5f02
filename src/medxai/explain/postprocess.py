"""Post-processing of attribution maps, always per sample (never across the batch).

Order: channel reduction -> ReLU -> upsampling -> normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medxai.errors import InputError

__all__ = ["postprocess"]

NORMALIZE = ("none", "minmax", "maxabs", "percentile")
UPSAMPLE = (None, "bilinear", "nearest")
REDUCE = (None, "sum", "abs_sum", "max_abs")


def channel_reduce(maps: torch.Tensor, how: str | None) -> torch.Tensor:
    """(..., C, H, W) -> (..., 1, H, W): ``sum``, ``abs_sum`` (sum of |a|) or ``max_abs``
    (max over channels of |a|, Simonyan 2014); None keeps the channels."""
    if how is None:
        return maps
    if how == "sum":
        return maps.sum(-3, keepdim=True)
    if how == "abs_sum":
        return maps.abs().sum(-3, keepdim=True)
    if how == "max_abs":
        return maps.abs().amax(-3, keepdim=True)
    raise InputError(f"reduce_channels must be one of {REDUCE}, got {how!r}")


def postprocess(maps: torch.Tensor, *, relu: bool = False, normalize: str = "none", percentile: float = 99.5,
                upsample: str | None = None, size: tuple[int, int] | int | None = None,
                reduce_channels: str | None = None) -> torch.Tensor:
    """Post-process maps (B, C, H, W) or (B, T, C, H, W); each (sample, target) map on its own.

    - ``reduce_channels``: None | "sum" | "abs_sum" | "max_abs" -> C becomes 1.
    - ``relu``: keep the positive part.
    - ``upsample``: None | "bilinear" | "nearest" to ``size`` (H, W) (align_corners=False).
    - ``normalize``: "none"; "minmax": (a - min) / (max - min) in [0, 1] (a constant map gives 0);
      "maxabs": a / max |a| in [-1, 1] (a zero map stays 0); "percentile": a / q, clipped to
      [-1, 1], where q is the ``percentile``-th percentile of |a| (linear interpolation, as
      numpy), which keeps a few extreme pixels from washing out the rest.
    Returns a new tensor on the input's device and dtype.
    """
    if maps.ndim not in (4, 5):
        raise InputError(f"maps must be (B, C, H, W) or (B, T, C, H, W), got shape {tuple(maps.shape)}")
    if normalize not in NORMALIZE:
        raise InputError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if upsample not in UPSAMPLE:
        raise InputError(f"upsample must be one of {UPSAMPLE}, got {upsample!r}")
    lead = maps.shape[:-3]
    out = channel_reduce(maps, reduce_channels)
    out = out.reshape(-1, *out.shape[-3:])
    if relu:
        out = out.clamp(min=0)
    if upsample is not None:
        if size is None:
            raise InputError("upsample needs a size (H, W)")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(out.shape[-2:]) != size:
            kw = {"align_corners": False} if upsample == "bilinear" else {}
            out = F.interpolate(out, size=size, mode=upsample, **kw)
    if normalize != "none":
        flat = out.flatten(1)
        if normalize == "minmax":
            lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
            rng = hi - lo
            flat = torch.where(rng > 0, (flat - lo) / torch.where(rng > 0, rng, 1), torch.zeros_like(flat))
        else:
            if normalize == "maxabs":
                scale = flat.abs().amax(1, keepdim=True)
            else:
                if not 0 < percentile <= 100:
                    raise InputError(f"percentile must be in (0, 100], got {percentile}")
                mag = flat.abs() if flat.dtype in (torch.float32, torch.float64) else flat.abs().float()
                scale = torch.quantile(mag, percentile / 100, dim=1, keepdim=True).to(flat.dtype)
            flat = torch.where(scale > 0, flat / torch.where(scale > 0, scale, 1), torch.zeros_like(flat))
            if normalize == "percentile":
                flat = flat.clamp(-1, 1)
        out = flat.reshape(out.shape)
    return out.reshape(*lead, *out.shape[-3:])
