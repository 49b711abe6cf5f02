"""Localisation: does the explanation point at the annotated evidence (mask or box)?

All functions take maps (B, H, W) / (B, 1, H, W) / (B, T, H, W) and masks, boxes or per-class
masks (see ``medxai.metrics._common``), and return one score per map: (B,) or (B, T), on the
maps' device and dtype. Empty masks give NaN (never True or 1); ties in the map are broken
by the lowest flat index (row-major). Nothing is normalised across the batch.

Volumes: maps (B, 1, D, H, W) or (B, T, D, H, W) with masks (B, D, H, W) or (B, 1|K, D, H, W)
(``medxai.metrics._common``): every score is the same formula over voxels (distances in voxels,
boxes as 3-D axis-aligned boxes); boxes as annotations are 2-D only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medxai.errors import InputError
from medxai.metrics._common import align, average_ranks, finish, minmax, nan_where
from medxai.metrics.registry import ScoreContext, metric, on_annotation

__all__ = [
    "energy_pointing_game",
    "mask_auroc",
    "mask_iou",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "topk_iou",
]

Annotation = torch.Tensor  # masks (B, H, W) | (B, 1, H, W) | (B, K, H, W), or boxes (B, 4) | (B, T, 4)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(*a.shape[:2], -1)


def _coords(flat: torch.Tensor, shape: Sequence[int]) -> list[torch.Tensor]:
    """Row-major coordinates (one tensor per axis) of flat indices into ``shape``."""
    out = []
    for n in reversed(tuple(shape)):
        out.append(flat % n)
        flat = flat // n
    return out[::-1]


@metric("pointing_game", category="localisation", higher_is_better=True, needs=("mask",), boxes_ok=True,
        reference="Zhang et al. 2018, Top-down neural attention by excitation backprop (IJCV)",
        score=on_annotation)
def pointing_game(maps: torch.Tensor, masks: Annotation, *, tolerance: float = 0.0, weighted: bool = False,
                  targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """Hit (1.0) if the map's maximum lies in the mask, else 0.0; NaN for an empty mask.

    The maximum is the first in row-major order among equal values. ``tolerance`` r (pixels)
    counts a hit when a mask pixel lies within the disk of radius r around the maximum
    (TorchRay uses r = 15 at 224 px). ``weighted``: a hit counts 1 - |mask| / HW, so hitting a
    large mask earns less (the variant Quantus documents; its 0.6.0 code crashes on it).
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0 pixels, got {tolerance}")
    a, s, squeeze = align(maps, masks, targets)
    flat_s = _flat(s)
    top = _flat(a).argmax(dim=-1)  # first maximal index
    if tolerance == 0:
        hit = flat_s.gather(-1, top[..., None])[..., 0]
    else:
        idx = torch.arange(flat_s.shape[-1], device=a.device)
        d2 = torch.zeros(top.shape + idx.shape, device=a.device, dtype=torch.float64)
        for r, t in zip(_coords(idx, a.shape[2:]), _coords(top, a.shape[2:]), strict=True):
            d2 += (r.to(torch.float64) - t.to(torch.float64)[..., None]) ** 2
        near = d2 <= float(tolerance) ** 2
        hit = (flat_s & near).any(dim=-1)
    out = hit.to(torch.float64)
    if weighted:
        out = out * (1 - flat_s.sum(-1) / flat_s.shape[-1])
    out = nan_where(~flat_s.any(dim=-1), out)
    return finish(out.to(maps.dtype), squeeze)


@metric("energy_pointing_game", category="localisation", higher_is_better=True, needs=("mask",), boxes_ok=True,
        reference="Wang et al. 2020, Score-CAM (CVPRW); = attribution localisation, Kohlbrenner et al. 2020",
        score=on_annotation)
def energy_pointing_game(maps: torch.Tensor, masks: Annotation, *, weighted: bool = False,
                         targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """Share of the positive attribution inside the mask: sum(relu(a) * mask) / sum(relu(a)).

    NaN for an empty mask or a map with no positive value. ``weighted`` multiplies by
    HW / |mask| (Kohlbrenner et al.'s size-weighted mu_w: a uniform map scores 1); Quantus 0.6.0
    multiplies by |mask| / size(x_batch[2:]), a slice over the batch axis.
    """
    a, s, squeeze = align(maps, masks, targets)
    pos = _flat(a).clamp_min(0).to(torch.float64)
    inside = (pos * _flat(s)).sum(-1)
    total = pos.sum(-1)
    out = inside / torch.where(total > 0, total, torch.ones_like(total))
    if weighted:
        size = _flat(s).sum(-1)
        out = out * _flat(s).shape[-1] / size.clamp_min(1)
    out = nan_where(~_flat(s).any(-1) | (total <= 0), out)
    return finish(out.to(maps.dtype), squeeze)


@metric("relevance_mass_accuracy", category="localisation", higher_is_better=True, needs=("mask",),
        boxes_ok=True, reference="Arras et al. 2022, CLEVR-XAI (Information Fusion), eq. 1",
        score=on_annotation)
def relevance_mass_accuracy(maps: torch.Tensor, masks: Annotation, *,
                            targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """sum(a * mask) / sum(a) on the map as given (Arras pools relevance to a non-negative map
    first; pass ``maps.abs()`` or ``maps.clamp_min(0)`` accordingly). NaN for an empty mask or
    a zero total.
    """
    a, s, squeeze = align(maps, masks, targets)
    fa = _flat(a).to(torch.float64)
    inside = (fa * _flat(s)).sum(-1)
    total = fa.sum(-1)
    out = inside / torch.where(total != 0, total, torch.ones_like(total))
    out = nan_where(~_flat(s).any(-1) | (total == 0), out)
    return finish(out.to(maps.dtype), squeeze)


@metric("relevance_rank_accuracy", category="localisation", higher_is_better=True, needs=("mask",),
        boxes_ok=True, reference="Arras et al. 2022, CLEVR-XAI (Information Fusion), eq. 2",
        score=on_annotation)
def relevance_rank_accuracy(maps: torch.Tensor, masks: Annotation, *,
                            targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """K = mask size; the fraction of the K highest-ranked pixels that lie in the mask.

    Ranking: descending, ties to the lowest flat index. NaN for an empty mask.
    """
    a, s, squeeze = align(maps, masks, targets)
    fa, fs = _flat(a), _flat(s)
    k = fs.sum(-1)
    hits = _topk_hits(fa.reshape(-1, fa.shape[-1]), fs.reshape(-1, fs.shape[-1]), k.reshape(-1)).reshape(k.shape)
    out = hits.to(torch.float64) / k.clamp_min(1)
    out = nan_where(k == 0, out)
    return finish(out.to(maps.dtype), squeeze)


def _topk_hits(fa: torch.Tensor, fs: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, how many of the k[i] highest-ranked entries of fa (ties: lowest index first) lie in fs.

    Selection, no full sort: one batched ``topk`` to the largest k gives each row's k-th largest
    value v; the entries > v and the first k - #(> v) entries equal to v in index order are taken.
    """
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return torch.zeros_like(k)
    top = torch.topk(fa, kmax, dim=-1, sorted=True).values
    v = top.gather(-1, (k - 1).clamp(min=0).to(torch.int64)[:, None])
    greater = fa > v
    eq = fa == v
    need = k - greater.sum(-1)
    take = greater | (eq & (eq.cumsum(-1) <= need[:, None]))
    return (take & fs).sum(-1) * (k > 0)


@metric("mask_auroc", category="localisation", higher_is_better=True, needs=("mask",), boxes_ok=True,
        reference="Fawcett 2006, An introduction to ROC analysis; pixels scored against the mask",
        score=on_annotation)
def mask_auroc(maps: torch.Tensor, masks: Annotation, *,
               targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """ROC AUC of the map's pixel values as a detector of mask pixels, per map.

    Mann-Whitney form with average ranks for ties, equal to sklearn's ``roc_auc_score``.
    NaN when the mask is empty or covers the whole map (AUC undefined).
    """
    a, s, squeeze = align(maps, masks, targets)
    fs = _flat(s)
    npos = fs.sum(-1).to(torch.float64)
    nneg = fs.shape[-1] - npos
    r = average_ranks(_flat(a))
    u = (r * fs).sum(-1) - npos * (npos + 1) / 2
    out = u / torch.where((npos > 0) & (nneg > 0), npos * nneg, torch.ones_like(npos))
    out = nan_where((npos == 0) | (nneg == 0), out)
    return finish(out.to(maps.dtype), squeeze)


def _topk_keep(a: torch.Tensor, k: float) -> torch.Tensor:
    """Pixels >= the value at index floor(HW * k / 100) of the descending sort (ViT study)."""
    if not 0 < k <= 100:
        raise InputError(f"k must be a percentage in (0, 100], got {k}")
    fa = _flat(a)
    n = fa.shape[-1]
    i = min(int(n * k / 100), n - 1)  # 0-based index in the descending order = (n - i)-th smallest
    thr = torch.kthvalue(fa, n - i, dim=-1, keepdim=True).values
    return (fa >= thr).reshape(a.shape)


def _bbox(m: torch.Tensor) -> torch.Tensor:
    """Half-open box (x0, y0, x1, y1) enclosing all True pixels of (..., H, W); NaN if none."""
    h, w = m.shape[-2:]
    rows, cols = m.any(-1), m.any(-2)
    ar_h = torch.arange(h, device=m.device, dtype=torch.float64)
    ar_w = torch.arange(w, device=m.device, dtype=torch.float64)
    inf = float("inf")
    y0 = torch.where(rows, ar_h, inf).amin(-1)
    y1 = torch.where(rows, ar_h, -inf).amax(-1) + 1
    x0 = torch.where(cols, ar_w, inf).amin(-1)
    x1 = torch.where(cols, ar_w, -inf).amax(-1) + 1
    box = torch.stack([x0, y0, x1, y1], -1)
    return nan_where(~rows.any(-1, keepdim=True).expand_as(box), box)


def _box_iou(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    iw = (torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])).clamp_min(0)
    ih = (torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])).clamp_min(0)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(p) + area(q) - inter)


def _bbox_nd(m: torch.Tensor) -> torch.Tensor:
    """Half-open box (lo_0, .., lo_k, hi_0, .., hi_k) over the spatial axes (D, H, W) of
    (B, T, *S); NaN if empty."""
    sp = m.shape[2:]
    lo, hi = [], []
    for ax, n in enumerate(sp):
        other = tuple(2 + j for j in range(len(sp)) if j != ax)
        on = m.any(dim=other) if other else m
        ar = torch.arange(n, device=m.device, dtype=torch.float64)
        lo.append(torch.where(on, ar, float("inf")).amin(-1))
        hi.append(torch.where(on, ar, -float("inf")).amax(-1) + 1)
    box = torch.stack(lo + hi, -1)
    empty = ~m.flatten(2).any(-1, keepdim=True)
    return nan_where(empty.expand_as(box), box)


def _box_iou_nd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    k = p.shape[-1] // 2
    ext = lambda b: (b[..., k:] - b[..., :k]).prod(-1)
    inter = (torch.minimum(p[..., k:], q[..., k:]) - torch.maximum(p[..., :k], q[..., :k])).clamp_min(0).prod(-1)
    return inter / (ext(p) + ext(q) - inter)


def _topk_iou_score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    opts = ctx.opts("topk_iou")
    ks = tuple(opts.pop("k", (5, 10, 20, 40)))
    out = fn(ctx.maps, ctx.annotation(), k=ks, **opts)
    return {f"topk_iou@{k:g}": out[..., j] for j, k in enumerate(ks)}


@metric("topk_iou", category="localisation", higher_is_better=True, needs=("mask",), boxes_ok=True,
        reference="ViT medical-imaging study (definitions.md s.2): top-k% pixels, one enclosing box, IoU",
        columns=("topk_iou@5", "topk_iou@10", "topk_iou@20", "topk_iou@40"), score=_topk_iou_score)
def topk_iou(maps: torch.Tensor, boxes_or_masks: Annotation, k: float | Sequence[float] = (5, 10, 20, 40), *,
             targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """IoU between the box enclosing the map's top-k% pixels and the annotation box.

    Kept pixels: value >= the value at index floor(HW * k / 100) of the descending sort; all
    their connected components are enclosed in one box (the box of all kept pixels). A mask
    annotation is replaced by the box enclosing it; boxes are rasterised to pixels first
    (x1, y1 exclusive), so they are clipped to the image. Returns (..., len(k)) for a sequence
    of k, (...) for one k; NaN for an empty annotation.
    """
    a, s, squeeze = align(maps, boxes_or_masks, targets, name="boxes_or_masks")
    box, iou = (_bbox, _box_iou) if a.ndim == 4 else (_bbox_nd, _box_iou_nd)
    ann = box(s)
    ks = (k,) if isinstance(k, (int, float)) else tuple(k)
    cols = [iou(box(_topk_keep(a, kk)), ann) for kk in ks]
    out = finish(torch.stack(cols, -1), squeeze).to(maps.dtype)
    return out[..., 0] if isinstance(k, (int, float)) else out


@metric("mask_iou", category="localisation", higher_is_better=True, needs=("mask",), boxes_ok=True,
        reference="pixel IoU of the thresholded map with the mask (ViT medical-imaging study)",
        score=on_annotation)
def mask_iou(maps: torch.Tensor, masks: Annotation, *, k: float | None = None, threshold: float = 0.5,
             targets: torch.Tensor | int | None = None) -> torch.Tensor:
    """Pixel IoU |keep & mask| / |keep | mask| of a thresholded map with the mask.

    keep = the top-k% pixels (same rule as :func:`topk_iou`) when ``k`` is given, else the
    pixels of the per-map min-max normalised map >= ``threshold`` (a constant map keeps every
    pixel at threshold 0 and none above). NaN for an empty mask.
    """
    a, s, squeeze = align(maps, masks, targets)
    keep = _topk_keep(a, k) if k is not None else minmax(a.to(torch.float64), a.ndim - 2) >= threshold
    inter = _flat(keep & s).sum(-1).to(torch.float64)
    union = _flat(keep | s).sum(-1).to(torch.float64)
    out = nan_where(~_flat(s).any(-1), inter / union.clamp_min(1))
    return finish(out.to(maps.dtype), squeeze)

