"""Validation at the door: images in [0, 1] as (B, C, H, W) (or volumes (B, C, D, H, W) where the caller
allows them), per-sample targets."""

from __future__ import annotations

import torch

from medxai.errors import InputError

#: the layout of each accepted rank, for the messages
LAYOUTS = {4: "(B, C, H, W)", 5: "(B, C, D, H, W)"}


def check_images(x: torch.Tensor, name: str = "x", *, ndim: int | tuple[int, ...] = 4) -> torch.Tensor:
    """Refuse anything that is not a finite float tensor in [0, 1] of shape (B, C, H, W).

    ``ndim`` gives the accepted ranks: 4 (images, the default), 5 (volumes (B, C, D, H, W)) or
    ``(4, 5)`` for a caller that handles both. Nothing is clamped: out-of-range input is an
    error, because normalisation lives in the model.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in ranks:
        want = " or ".join(f"{r} dimensions {LAYOUTS.get(r, '')}".rstrip() for r in ranks)
        raise InputError(f"{name} must have {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(f"{name} contains {bad} NaN/Inf value(s); images must be finite in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must lie in [0, 1] (normalisation is inside the model); got range [{lo:.4g}, {hi:.4g}]"
        )
    return x


def as_targets(target: int | torch.Tensor | list | None, batch: int, device: torch.device,
               default: torch.Tensor | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Turn ``target`` (int, (B,) tensor/list, or None = ``default``) into a (B,) long tensor."""
    if target is None:
        if default is None:
            raise InputError("target is None and no default (predicted class) was given")
        t = default
    elif isinstance(target, int):
        t = torch.full((batch,), int(target), dtype=torch.long, device=device)
    else:
        t = torch.as_tensor(target, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim != 1 or t.shape[0] != batch:
            raise InputError(f"target must be an int or have shape ({batch},), got {tuple(t.shape)}")
        if t.is_floating_point():
            raise InputError("target must hold class indices (integers)")
        t = t.long()
    if num_classes is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"target out of range for {num_classes} outputs: {t.tolist()}")
    return t.to(device)


def check_logits(z: torch.Tensor, n: int, name: str = "clean_logits") -> torch.Tensor:
    """A caller's (N, K) logits of ``n`` images, refused (InputError) when the shape or a value is wrong:
    argmax and softmax of NaN or Inf logits would pass on as predictions."""
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != n:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"{name} must be (N, K) with N = {n} images, got {shape}")
    if not bool(torch.isfinite(z).all()):
        raise InputError(f"{name} holds NaN or Inf values: the model's outputs cannot be read as predictions")
    return z
