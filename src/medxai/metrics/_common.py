"""Shared input handling for the metrics: maps, masks, boxes, targets, ranks and orderings.

Conventions (definitions.md section 0):
- maps: (B, H, W) or (B, 1, H, W) for one map per image, (B, T, H, W) for T targets per image.
  A 4-D map with C > 1 and no target axis to align it with is refused: reduce the channels
  explicitly first (e.g. ``maps.sum(1)`` or ``maps.abs().amax(1)``).
- volumes: maps are 5-D, (B, 1, D, H, W) or (B, T, D, H, W) (a 4-D map is always 2-D: (B, T, H, W));
  their masks are (B, D, H, W), (B, 1, D, H, W) or per-class (B, K, D, H, W); no boxes.
- masks: bool or {0, 1} (B, H, W), (B, 1, H, W), per-target (B, T, H, W) or per-class
  (B, K, H, W) selected with ``targets``. Boxes (B, 4) or (B, T, 4) as x0, y0, x1, y1 in pixel
  indices, half-open: pixel (row r, column c) is inside iff x0 <= c < x1 and y0 <= r < y1.
- NaN policy: NaN/Inf in a map is refused (InputError); an empty mask gives NaN; a ratio whose
  denominator is zero (no positive mass, constant map where a spread is needed) gives NaN.
- Ties: stable sort, the lowest flat index first.
Nothing here modifies the caller's tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from medxai.errors import InputError


def check_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """Refuse non-tensors, non-float, wrong ndim and NaN/Inf maps. Returns ``maps`` unchanged."""
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if not maps.is_floating_point():
        raise InputError(f"{name} must be a float tensor, got dtype {maps.dtype}")
    if maps.ndim not in (3, 4, 5):
        raise InputError(f"{name} must have shape (B, H, W), (B, 1, H, W) or (B, T, H, W) (volumes: "
                         f"(B, 1, D, H, W) or (B, T, D, H, W)), got {tuple(maps.shape)}")
    if maps.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(maps.shape)})")
    if not bool(torch.isfinite(maps).all()):
        raise InputError(f"{name} contains NaN/Inf; attribution maps must be finite")
    return maps


def single_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """One map per image: (B, H, W) or (B, 1, H, W) -> (B, H, W); a volume's (B, 1, D, H, W) ->
    (B, D, H, W) (a view, never a copy)."""
    check_maps(maps, name)
    if maps.ndim in (4, 5):
        if maps.shape[1] != 1:
            raise InputError(
                f"{name} has {maps.shape[1]} channels; give one map per image (B, H, W) or (B, 1, H, W): "
                "reduce the channels explicitly first, e.g. maps.sum(1) or maps.abs().amax(1)")
        maps = maps[:, 0]
    return maps


def boxes_to_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rasterise half-open boxes (..., 4) = x0, y0, x1, y1 into bool masks (..., H, W)."""
    if boxes.shape[-1] != 4:
        raise InputError(f"boxes must end in 4 coordinates (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    b = boxes.to(torch.float64)
    cols = torch.arange(width, device=boxes.device, dtype=torch.float64)
    rows = torch.arange(height, device=boxes.device, dtype=torch.float64)
    inx = (cols >= b[..., 0:1]) & (cols < b[..., 2:3])  # (..., W)
    iny = (rows >= b[..., 1:2]) & (rows < b[..., 3:4])  # (..., H)
    return iny[..., :, None] & inx[..., None, :]


def as_bool_masks(masks: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """bool view of a {0, 1} mask; anything else is refused."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point() and not bool(torch.isfinite(masks).all()):
        raise InputError(f"{name} contains NaN/Inf")
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise InputError(f"{name} must be boolean or hold only 0 and 1")
    return masks != 0


def align(
    maps: torch.Tensor,
    masks: torch.Tensor,
    targets: torch.Tensor | int | None = None,
    *,
    name: str = "masks",
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Bring maps and masks (or boxes) to (B, T, H, W) each.

    ``targets`` ((B,) or (B, T) class indices) picks per-class masks (B, K, H, W) for each map.
    Returns (maps (B, T, H, W), masks (B, T, H, W) bool, squeeze) where ``squeeze`` says there is
    one map per image, so scores come back as (B,) rather than (B, T). Volumes (5-D maps): the
    same with (B, T, D, H, W).
    """
    check_maps(maps)
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(masks).__name__}")
    if maps.ndim == 5:
        return _align_volumes(maps, masks, targets, name)
    m4 = maps[:, None] if maps.ndim == 3 else maps
    b, h, w = m4.shape[0], m4.shape[2], m4.shape[3]
    if masks.shape[0] != b:
        raise InputError(f"{name} has batch {masks.shape[0]} but maps have batch {b}")
    is_boxes = (masks.dtype != torch.bool and masks.shape[-1] == 4
                and (masks.ndim == 2 or (masks.ndim == 3 and tuple(masks.shape[-2:]) != (h, w))))
    if is_boxes:
        s = boxes_to_masks(masks, h, w)
        s = s[:, None] if s.ndim == 3 else s  # (B, K, H, W)
    elif masks.ndim in (3, 4):
        s = as_bool_masks(masks[:, None] if masks.ndim == 3 else masks, name)
        if tuple(s.shape[-2:]) != (h, w):
            raise InputError(f"{name} are {tuple(s.shape[-2:])} but maps are {(h, w)}; resize one of them first")
    else:
        raise InputError(f"{name} must be (B, H, W), (B, K, H, W) or boxes (B, 4), got {tuple(masks.shape)}")
    return _pick(m4, s, targets, name)


def _align_volumes(maps: torch.Tensor, masks: torch.Tensor, targets, name: str
                   ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``align`` for 5-D maps (B, T, D, H, W): masks (B, D, H, W) or (B, 1|K, D, H, W), no boxes."""
    b, sp = maps.shape[0], tuple(maps.shape[2:])
    if masks.shape[0] != b:
        raise InputError(f"{name} has batch {masks.shape[0]} but maps have batch {b}")
    if masks.ndim not in (4, 5):
        raise InputError(f"{name} of volumes must be (B, D, H, W) or (B, K, D, H, W) (no boxes), "
                         f"got {tuple(masks.shape)}")
    s = as_bool_masks(masks[:, None] if masks.ndim == 4 else masks, name)
    if tuple(s.shape[2:]) != sp:
        raise InputError(f"{name} are {tuple(s.shape[2:])} but maps are {sp}; resize one of them first")
    return _pick(maps, s, targets, name)


def _pick(m: torch.Tensor, s: torch.Tensor, targets, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-class masks picked by ``targets`` and both broadcast to (B, T, *S)."""
    b, tm, sp = m.shape[0], m.shape[1], tuple(m.shape[2:])
    if targets is not None:
        tt = torch.as_tensor(targets, device=s.device)
        if tt.is_floating_point():
            raise InputError("targets must hold class indices (integers)")
        tt = tt.long()
        if tt.ndim == 0:
            tt = tt.expand(b)
        if tt.ndim == 1:
            tt = tt[:, None]
        if tt.ndim != 2 or tt.shape[0] != b:
            raise InputError(f"targets must be an int, (B,) or (B, T); got {tuple(tt.shape)}")
        if int(tt.min()) < 0 or int(tt.max()) >= s.shape[1]:
            raise InputError(f"targets out of range for {s.shape[1]} class {name} per image")
        s = s.gather(1, tt.view(*tt.shape, *([1] * len(sp))).expand(-1, -1, *sp))
    elif s.shape[1] > 1 and tm == 1:
        raise InputError(f"{s.shape[1]} {name} per image but one map: give targets to pick the class masks")
    t = max(tm, s.shape[1])
    if s.shape[1] not in (1, t) or tm not in (1, t):
        raise InputError(f"maps have {tm} targets per image but {name} have {s.shape[1]}")
    return m.expand(-1, t, *sp), s.expand(-1, t, *sp), t == 1


def finish(scores: torch.Tensor, squeeze: bool) -> torch.Tensor:
    """(B, T) scores -> (B,) when one map per image was given."""
    return scores[:, 0] if squeeze else scores


def _fast_path(values: torch.Tensor) -> bool:
    return values.device.type == "cpu" and values.dtype == torch.float32 and values.shape[-1] < 2**32


def sort_values(values: torch.Tensor) -> torch.Tensor:
    """Values sorted ascending along the last axis.

    On the CPU this is numpy's vectorised (x86-simd-sort) sort on a zero-copy view, ~15x faster
    than ``torch.sort`` here; elsewhere ``torch.sort``. The result is the same either way.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().contiguous().numpy(), axis=-1))
    return torch.sort(values, dim=-1).values


def stable_sort(values: torch.Tensor, descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted values, indices) along the last axis; ties keep the lowest index first (stable).

    CPU float32 fast path: each value becomes an order-preserving 32-bit key (descending: its
    complement) packed above its 32-bit index into one uint64, so the keys are distinct and an
    unstable vectorised sort (numpy) returns exactly the stable order. Otherwise ``torch.sort``
    with ``stable=True``. -0.0 and +0.0 count as equal.
    """
    if not _fast_path(values):
        out = torch.sort(values, dim=-1, descending=descending, stable=True)
        return out.values, out.indices
    v = (values.detach() + 0.0).contiguous().numpy()  # + 0.0 turns -0.0 into +0.0
    bits = v.view(np.uint32)
    key = bits ^ np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    if descending:
        key = ~key
    n = v.shape[-1]
    packed = (key.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    packed.sort(axis=-1)
    idx = torch.from_numpy((packed & np.uint64(0xFFFFFFFF)).astype(np.int64))
    return values.gather(-1, idx), idx


def order_desc(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort the last axis descending; ties: the lowest index first (stable)."""
    return stable_sort(values, descending=True)[1]


def order_asc(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort the last axis ascending; ties: the lowest index first (stable)."""
    return stable_sort(values, descending=False)[1]


def ranks_of(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: position of every element in ``order`` (..., n) -> (..., n) long."""
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis with ties given their average rank (scipy.stats.rankdata).

    Batched and exact: (..., n) -> float64 (..., n).
    """
    n = values.shape[-1]
    sv, idx = stable_sort(values)
    pos = torch.arange(n, device=values.device, dtype=torch.float64).expand(sv.shape)
    new = torch.ones(sv.shape, dtype=torch.bool, device=values.device)
    new[..., 1:] = sv[..., 1:] != sv[..., :-1]
    # first position of each tie group, carried forward; last position, carried backward
    first = torch.where(new, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    end = torch.ones_like(new)
    end[..., :-1] = new[..., 1:]
    lastpos = torch.where(end, pos, torch.full_like(pos, float(n))).flip(-1).cummin(dim=-1).values.flip(-1)
    avg = (first + lastpos) / 2 + 1
    out = torch.empty_like(avg)
    out.scatter_(-1, idx, avg)
    return out


def minmax(maps: torch.Tensor, spatial_dims: int = 2) -> torch.Tensor:
    """Per-map min-max normalisation over the last ``spatial_dims`` axes (2: images, 3: volumes);
    a constant map becomes all zeros."""
    dims = tuple(range(-spatial_dims, 0))
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def nan_where(cond: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` with NaN where ``cond`` holds (out of place)."""
    return torch.where(cond, torch.full_like(values, float("nan")), values)
