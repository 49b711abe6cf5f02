"""Post-processing of attribution maps, always per sample (never across the batch).

Order: channel reduction -> ReLU -> upsampling -> normalisation. Images (2 spatial axes) and
volumes (3: D, H, W) share the code; ``spatial_dims`` (or a 3-entry ``size``) says which.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medxai.errors import InputError

__all__ = ["postprocess"]

NORMALIZE = ("none", "minmax", "maxabs", "percentile")
UPSAMPLE = (None, "bilinear", "trilinear", "nearest")
REDUCE = (None, "sum", "abs_sum", "max_abs")


def channel_reduce(maps: torch.Tensor, how: str | None, spatial_dims: int = 2) -> torch.Tensor:
    """(..., C, *S) -> (..., 1, *S) with S the last ``spatial_dims`` axes: ``sum``, ``abs_sum``
    (sum of |a|) or ``max_abs`` (max over channels of |a|, Simonyan 2014); None keeps the channels."""
    c = -(spatial_dims + 1)
    if how is None:
        return maps
    if how == "sum":
        return maps.sum(c, keepdim=True)
    if how == "abs_sum":
        return maps.abs().sum(c, keepdim=True)
    if how == "max_abs":
        return maps.abs().amax(c, keepdim=True)
    raise InputError(f"reduce_channels must be one of {REDUCE}, got {how!r}")


def postprocess(maps: torch.Tensor, *, relu: bool = False, normalize: str = "none", percentile: float = 99.5,
                upsample: str | None = None, size: tuple[int, ...] | int | None = None,
                reduce_channels: str | None = None, spatial_dims: int | None = None) -> torch.Tensor:
    """Post-process maps (B, C, H, W) or (B, T, C, H, W); each (sample, target) map on its own.

    Volumes: ``spatial_dims=3`` (or a 3-entry ``size``), maps (B, C, D, H, W) or (B, T, C, D, H, W);
    "bilinear" and "trilinear" then both mean trilinear (and in 2-D both bilinear).

    - ``reduce_channels``: None | "sum" | "abs_sum" | "max_abs" -> C becomes 1.
    - ``relu``: keep the positive part.
    - ``upsample``: None | "bilinear" | "nearest" to ``size`` (H, W) (align_corners=False).
    - ``normalize``: "none"; "minmax": (a - min) / (max - min) in [0, 1] (a constant map gives 0);
      "maxabs": a / max |a| in [-1, 1] (a zero map stays 0); "percentile": a / q, clipped to
      [-1, 1], where q is the ``percentile``-th percentile of |a| (linear interpolation, as
      numpy), which keeps a few extreme pixels from washing out the rest.
    Returns a new tensor on the input's device and dtype.
    """
    if spatial_dims is None:
        spatial_dims = 3 if size is not None and not isinstance(size, int) and len(size) == 3 else 2
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    sd = spatial_dims
    if maps.ndim not in (sd + 2, sd + 3):
        lay = "(B, C, H, W) or (B, T, C, H, W)" if sd == 2 else "(B, C, D, H, W) or (B, T, C, D, H, W)"
        raise InputError(f"maps must be {lay}, got shape {tuple(maps.shape)}")
    if normalize not in NORMALIZE:
        raise InputError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if upsample not in UPSAMPLE:
        raise InputError(f"upsample must be one of {UPSAMPLE}, got {upsample!r}")
    lead = maps.shape[:-(sd + 1)]
    out = channel_reduce(maps, reduce_channels, sd)
    out = out.reshape(-1, *out.shape[-(sd + 1):])
    if relu:
        out = out.clamp(min=0)
    if upsample is not None:
        if size is None:
            raise InputError("upsample needs a size (H, W) or (D, H, W)")
        size = (size,) * sd if isinstance(size, int) else tuple(size)
        if len(size) != sd:
            raise InputError(f"size {size} does not have {sd} spatial entries")
        if tuple(out.shape[-sd:]) != size:
            mode = "nearest" if upsample == "nearest" else ("bilinear" if sd == 2 else "trilinear")
            kw = {"align_corners": False} if mode != "nearest" else {}
            out = F.interpolate(out, size=size, mode=mode, **kw)
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
    return out.reshape(*lead, *out.shape[-(sd + 1):])
