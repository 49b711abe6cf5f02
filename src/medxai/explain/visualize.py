"""Heat maps over images that stay comparable: ``overlay``, ``grid`` and LIME's views.

Scaling: a map is divided by a scale ``s`` = the ``percentile`` (99.5) of its |values| (per panel,
per method or over everything: ``shared_scale``), then clipped to [-1, 1]. Only the ratio
``map / s`` is rendered, so maps of any magnitude (1e-8 or 1e8) look the same (captum issue #393
turned tiny maps white). Signed maps (any value < 0, or ``signed=True``) use a diverging colormap
centred on 0 (``RdBu_r``: red positive, blue negative); unsigned maps use ``jet`` from 0 to s.
The overlay is ``(1 - a) * image + a * colour``, with a = ``alpha`` (or ``alpha * |map / s|`` with
``fade=True``) and a = 0 where the map is NaN. One-channel images are shown in gray.
LIME views follow ``lime_image.ImageExplanation.get_image_and_mask``: superpixels by decreasing
|weight|; "pros_cons" tints the top ones green (weight > 0) or red (< 0), "positive" tints the
top positive ones green, "hide_rest" shows only the top positive ones (rest black, as lime).
Everything here is for display: numpy and matplotlib (Agg), outside any hot loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medxai._util.plot import plain_text
from medxai.errors import InputError

__all__ = ["grid", "lime_view", "overlay", "percentile_scale"]

SHARED_SCALES = ("per_method", "global", "none")
LIME_VIEWS = ("pros_cons", "positive", "hide_rest")
SIGNED_CMAP, UNSIGNED_CMAP = "RdBu_r", "jet"
PROS, CONS = (0.0, 0.8, 0.0), (0.9, 0.0, 0.0)


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _image_rgb(image) -> np.ndarray:
    """(C, H, W) tensor / (H, W) / (H, W, C) array in [0, 1] -> (H, W, 3) float64; gray repeated."""
    is_tensor = isinstance(image, torch.Tensor)
    im = _np(image)
    if im.ndim == 3 and is_tensor:
        im = im.transpose(1, 2, 0)
    if im.ndim == 2:
        im = im[..., None]
    if im.ndim != 3 or im.shape[-1] not in (1, 3):
        raise InputError(f"image must be (C, H, W) tensor or (H, W[, C]) array with C in (1, 3), got {im.shape}")
    if not np.isfinite(im).all() or im.min() < 0 or im.max() > 1:
        raise InputError("image must be finite and in [0, 1]")
    return np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im


def _map2d(attr, size: tuple[int, int]) -> np.ndarray:
    """(H, W), (1, H, W) or (C, H, W) (summed over channels) -> (H, W) float64 at ``size``."""
    m = attr.detach().to("cpu", torch.float64) if isinstance(attr, torch.Tensor) else torch.as_tensor(
        np.asarray(attr, dtype=np.float64))
    if m.ndim == 3:
        m = m.sum(0)
    if m.ndim != 2:
        raise InputError(f"an attribution map must be (H, W) or (C, H, W), got shape {tuple(m.shape)}")
    if tuple(m.shape) != tuple(size):
        m = torch.nn.functional.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return m.numpy()


def percentile_scale(maps, percentile: float = 99.5) -> float:
    """The scale of one map or a group of maps: the ``percentile`` of |values| (NaN ignored).

    Falls back to max |value| when that percentile is 0, and to 1 for an all-zero map.
    """
    a = np.abs(np.concatenate([_np(m).ravel() for m in maps]) if isinstance(maps, (list, tuple)) else _np(maps).ravel())
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 1.0
    s = float(np.percentile(a, percentile))
    if s <= 0:
        s = float(a.max())
    return s if s > 0 else 1.0


def _is_signed(maps, signed: bool | str) -> bool:
    if signed == "auto":
        return any(np.nanmin(_np(m)) < 0 for m in maps) if isinstance(maps, (list, tuple)) else bool(
            np.nanmin(_np(maps)) < 0)
    return bool(signed)


def _norm(signed: bool, scale: float, vmin: float | None, vmax: float | None):
    from matplotlib.colors import Normalize

    if vmin is not None or vmax is not None:
        if vmin is None or vmax is None or not vmax > vmin:
            raise InputError("give both vmin and vmax, with vmax > vmin")
        return Normalize(vmin, vmax, clip=True)
    return Normalize(-scale if signed else 0.0, scale, clip=True)


def _cmap(cmap: str | None, signed: bool):
    from matplotlib import colormaps

    return colormaps[cmap or (SIGNED_CMAP if signed else UNSIGNED_CMAP)]


def overlay(image, attribution, *, cmap: str | None = None, alpha: float = 0.5, vmin: float | None = None,
            vmax: float | None = None, scale: float | None = None, signed: bool | str = "auto",
            percentile: float = 99.5, fade: bool = False) -> np.ndarray:
    """Blend a heat map over an image: -> RGBA (H, W, 4) float64 in [0, 1] (alpha channel 1).

    image: (C, H, W) tensor (C = 1 or 3) or (H, W[, C]) array in [0, 1]. attribution: (H, W),
    (1, H, W) or (C, H, W) (summed); resized bilinearly to the image if needed. Colour range:
    ``vmin``/``vmax`` if given, else +-``scale`` (signed) or [0, scale], with ``scale`` default
    ``percentile_scale(attribution, percentile)``.
    """
    img = _image_rgb(image)
    m = _map2d(attribution, img.shape[:2])
    sgn = _is_signed(m, signed)
    norm = _norm(sgn, scale if scale is not None else percentile_scale(m, percentile), vmin, vmax)
    u = np.asarray(norm(np.nan_to_num(m, nan=0.0)), dtype=np.float64)
    colour = _cmap(cmap, sgn)(u)[..., :3]
    a = np.full(m.shape, float(alpha))
    if fade:
        a = a * (np.abs(2 * u - 1) if sgn else u)
    a[~np.isfinite(m)] = 0.0
    out = np.ones((*m.shape, 4))
    out[..., :3] = (1 - a[..., None]) * img + a[..., None] * colour
    return out


def _selected(weights: np.ndarray, view: str, num_features: int, min_weight: float) -> tuple[list, list]:
    """(pros, cons) superpixel ids as lime picks them (by decreasing |weight|, stable)."""
    order = sorted(range(len(weights)), key=lambda i: -abs(weights[i]))
    if view == "pros_cons":
        top = [i for i in order[:num_features] if abs(weights[i]) >= min_weight]
        return [i for i in top if weights[i] >= 0], [i for i in top if weights[i] < 0]
    return [i for i in order if weights[i] > 0 and weights[i] > min_weight][:num_features], []


def lime_view(image, attribution, *, segments=None, view: str = "pros_cons", num_features: int = 5,
              min_weight: float = 0.0, alpha: float = 0.5, boundaries: bool = True) -> np.ndarray:
    """LIME's views -> RGBA (H, W, 4): "pros_cons" (green / red), "positive", "hide_rest".

    ``attribution`` is either the pixel map of ``Lime.attribute`` (H, W) / (1, H, W), whose distinct
    values are taken as the superpixels when ``segments`` is None, or per-superpixel weights (F,)
    with ``segments`` (H, W) ints. Boundaries of the chosen superpixels are drawn in yellow.
    """
    from skimage.segmentation import find_boundaries

    if view not in LIME_VIEWS:
        raise InputError(f"view must be one of {LIME_VIEWS}, got {view!r}")
    img = _image_rgb(image)
    a = _np(attribution)
    if segments is None:
        m = _map2d(attribution, img.shape[:2])
        values, seg = np.unique(m, return_inverse=True)
        seg, weights = seg.reshape(m.shape), values
    else:
        seg = np.asarray(_np(segments), dtype=np.int64)
        weights = a.ravel()
        if seg.shape != img.shape[:2] or seg.min() < 0 or seg.max() >= len(weights):
            raise InputError("segments must be (H, W) ints indexing the weights")
    pros, cons = _selected(weights, view, num_features, min_weight)
    pro_mask, con_mask = np.isin(seg, pros), np.isin(seg, cons)
    out = np.ones((*img.shape[:2], 4))
    if view == "hide_rest":
        rgb = np.where(pro_mask[..., None], img, 0.0)
    else:
        rgb = img.copy()
        for mask, col in ((pro_mask, PROS), (con_mask, CONS)):
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(col)
    if boundaries:
        chosen = np.where(pro_mask | con_mask, seg + 1, 0)  # 0: background for skimage
        edge = find_boundaries(chosen, mode="inner") & (chosen > 0)
        rgb[edge] = (1.0, 1.0, 0.0)
    out[..., :3] = rgb
    return out


def _column_key_group(key) -> tuple[str, str]:
    """Column label and scale group of a maps key: str -> (key, key); (model, method) -> ("model / method", method)."""
    if isinstance(key, tuple):
        return " / ".join(map(str, key)), str(key[-1])
    return str(key), str(key)


@plain_text
def grid(images: torch.Tensor, maps: Mapping | torch.Tensor, *, row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, shared_scale: str = "per_method", percentile: float = 99.5,
         cmap: str | None = None, alpha: float = 0.5, signed: bool | str = "auto", fade: bool = False,
         views: Mapping | None = None, show_images: bool = True, colorbar: bool = True,
         panel_size: float = 2.0, path: str | Path | None = None, dpi: int = 100):
    """A figure of heat maps: rows = images, columns = methods (and models), on comparable scales.

    images: (N, C, H, W) in [0, 1]. maps: {column key: (N, H, W) or (N, C, H, W)} in column order
    (a key is a method name or a (model, method) tuple), or a tensor (N, M, H, W) of M columns.
    shared_scale: "per_method" (one scale per method, shared by all rows and models),
    "global" (one for everything), "none" (each panel its own). ``views``: {key: "pros_cons" |
    "positive" | "hide_rest"} renders a LIME pixel map with that view instead of a heat map.
    Colour bars show each scale in the map's units. Saved to ``path`` (PNG) when given.
    Returns the matplotlib Figure.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    if shared_scale not in SHARED_SCALES:
        raise InputError(f"shared_scale must be one of {SHARED_SCALES}, got {shared_scale!r}")
    if isinstance(maps, torch.Tensor):
        if maps.ndim != 4:
            raise InputError(f"a maps tensor must be (N, M, H, W), got {tuple(maps.shape)}")
        maps = {f"map {j}": maps[:, j] for j in range(maps.shape[1])}
    n = images.shape[0]
    keys = list(maps)
    for k in keys:
        if maps[k].shape[0] != n:
            raise InputError(f"maps[{k!r}] has {maps[k].shape[0]} rows, images have {n}")
    views = dict(views or {})
    labels = [_column_key_group(k)[0] for k in keys] if col_labels is None else list(col_labels)
    if len(labels) != len(keys):
        raise InputError(f"{len(labels)} column labels for {len(keys)} columns")
    size = tuple(images.shape[2:])
    m2 = {k: [_map2d(maps[k][i], size) for i in range(n)] for k in keys}

    # scales and signs: per group of columns
    heat = [k for k in keys if k not in views]
    group = {k: ("all" if shared_scale == "global" else _column_key_group(k)[1]) for k in heat}
    gscale, gsign = {}, {}
    for g in set(group.values()):
        members = [a for k in heat if group[k] == g for a in m2[k]]
        gscale[g], gsign[g] = percentile_scale(members, percentile), _is_signed(members, signed)

    cols = len(keys) + int(show_images)
    fig = Figure(figsize=(panel_size * cols, panel_size * n + (0.6 if colorbar else 0)), dpi=dpi,
                 layout="constrained")
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        c0 = 0
        if show_images:
            ax = axes[i, 0]
            ax.imshow(overlay(images[i], np.zeros(size), alpha=0.0))
            c0 = 1
        for j, k in enumerate(keys):
            ax = axes[i, c0 + j]
            if k in views:
                ax.imshow(lime_view(images[i], m2[k][i], view=views[k]))
                continue
            g = group[k]
            sgn = gsign[g] if shared_scale != "none" else _is_signed(m2[k][i], signed)
            s = gscale[g] if shared_scale != "none" else percentile_scale(m2[k][i], percentile)
            ax.imshow(overlay(images[i], m2[k][i], cmap=cmap, alpha=alpha, scale=s, signed=sgn, fade=fade))
            if colorbar and shared_scale == "none":
                sm = ScalarMappable(_norm(sgn, s, None, None), _cmap(cmap, sgn))
                fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if show_images:
        axes[0, 0].set_title("image", fontsize=9)
    for j, lab in enumerate(labels):
        axes[0, int(show_images) + j].set_title(lab, fontsize=9)
    for i, lab in enumerate(row_labels or []):
        axes[i, 0].set_ylabel(str(lab), fontsize=9)
    if colorbar and shared_scale != "none":
        # per method: a bar under each column (columns of one method repeat the same bar);
        # global: one bar under all heat-map columns
        heat_cols = [int(show_images) + j for j, k in enumerate(keys) if k in group]
        spans = [heat_cols] if shared_scale == "global" else [[c] for c in heat_cols]
        for span in spans:
            g = group[keys[span[0] - int(show_images)]]
            sm = ScalarMappable(_norm(gsign[g], gscale[g], None, None), _cmap(cmap, gsign[g]))
            fig.colorbar(sm, ax=list(axes[:, span].ravel()), orientation="horizontal", fraction=0.04,
                         pad=0.02, aspect=15 * len(span))
    if path is not None:
        from medxai._util.io import atomic_write

        atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    return fig
