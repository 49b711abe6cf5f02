"""Drawing primitives shared by the synthetic studies.

Every per-pixel computation here uses only correctly rounded operations (+, -, *, /, sqrt,
comparisons) on float32; transcendental functions (whose SIMD / libm variants may differ in the
last bit between machines) touch only per-image parameters and are rounded to 1e-9 (``unit``,
``cos_sin``), so a study renders to the same bytes on any machine with the same numpy. Geometry is
expressed in fractions of the image side and converted to pixels per size.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from medxai._util.seed import derive_seed

try:  # the clip ufunc itself: np.clip's Python wrapper costs ~10 us a call, more than the work here
    from numpy._core.umath import clip as _clip_ufunc
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip_ufunc

F32 = np.float32


def clip(x: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """Elementwise clip of a float32 array to [lo, hi] (optionally in place)."""
    return _clip_ufunc(x, F32(lo), F32(hi), out=out) if out is not None else _clip_ufunc(x, F32(lo), F32(hi))


@lru_cache(maxsize=16)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as fractions of the side: (Y, X), each float32 (size, size), read-only."""
    c = (np.arange(size, dtype=F32) + F32(0.5)) / F32(size)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step 0 -> 1 as x goes from e0 to e1 (e1 < e0 allowed: a falling step); exact 0 / 1 outside."""
    t = (x - F32(e0)) * F32(1.0 / (e1 - e0))
    _clip_ufunc(t, F32(0), F32(1), out=t)
    return t * t * (F32(3) - F32(2) * t)


def bump(q: np.ndarray) -> np.ndarray:
    """Compact Gaussian-like bump (1 - q)_+^2 of a squared normalised distance q; 0 for q >= 1."""
    t = np.maximum(F32(1) - q, F32(0))
    return t * t


def unit(theta: float) -> tuple[float, float]:
    """(cos, sin) of a scalar angle, rounded to 1e-9 so platform libm differences vanish."""
    return round(math.cos(theta), 9), round(math.sin(theta), 9)


def cos_sin(theta) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised (cos, sin) of parameter angles (not pixels), rounded to 1e-9 like ``unit``."""
    t = np.asarray(theta, dtype=np.float64)
    return np.round(np.cos(t), 9), np.round(np.sin(t), 9)


def threshold(alpha: np.ndarray, thr: float = 0.05) -> np.ndarray:
    """Zero an opacity field below ``thr`` (in place) so its support is exactly the drawn lesion.

    A faint field (peak below 2 * thr, e.g. a subtle lesion in a tiny image) keeps its upper half, so a
    lesion that was drawn never vanishes from its mask.
    """
    peak = float(alpha.max()) if alpha.size else 0.0
    if 0 < peak < 2 * thr:
        thr = 0.5 * peak
    alpha[alpha < thr] = 0
    return alpha


# ----------------------------------------------------------------------------------------- textures


@lru_cache(maxsize=32)
def _bank(size: int, cells: int) -> np.ndarray:
    """Four smooth value-noise fields (4, 2*size, 2*size), float32, about zero mean and unit std.

    ``cells`` lattice cells span one image side, so features are about size / cells pixels wide.
    Built once per (size, cells) from a fixed seed with cubic-Hermite interpolation (basic ops only).
    """
    k, side = 4, 2 * size
    cell = size / cells  # pixels per lattice cell
    box = max(1, round(cell / 2))
    pad = 2 * box
    full = side + 2 * pad
    rng = np.random.default_rng(derive_seed("medxai.synthetic.bank", size, cells))
    n = math.ceil(full / cell) + 2
    lattice = rng.random((k, n, n), dtype=np.float64).astype(F32)
    t = (np.arange(full, dtype=np.float64) + 0.5) / cell
    i0 = np.floor(t).astype(np.intp)
    f = (t - i0).astype(F32)
    w = f * f * (F32(3) - F32(2) * f)
    rows = lattice[:, i0, :] * (1 - w)[None, :, None] + lattice[:, i0 + 1, :] * w[None, :, None]
    out = rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]
    # two box blurs of half a cell per axis remove the lattice's square look
    for axis in (1, 2, 1, 2):
        c = np.cumsum(out, axis=axis, dtype=np.float64)
        lo = np.take(c, np.arange(0, full - box), axis=axis)
        hi = np.take(c, np.arange(box, full), axis=axis)
        out = ((hi - lo) / box).astype(F32)
        full_ax = out.shape[axis]
        out = np.take(out, np.r_[np.arange(full_ax), np.full(box, full_ax - 1)], axis=axis)
    out = out[:, pad:pad + side, pad:pad + side]
    mean = round(float(out.mean(dtype=np.float64)), 4)
    std = round(float(out.std(dtype=np.float64)), 4)
    out = ((out - F32(mean)) / F32(std)).astype(F32)
    out.flags.writeable = False
    return out


def texture(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A (size, size) window of a cached smooth noise field, randomly offset and flipped.

    Zero mean, unit std (about); a read-only view: do arithmetic on it, never write into it.
    """
    bank = _bank(size, cells)
    u = rng.random(3)
    k, flips = int(u[0] * 16) // 4, int(u[0] * 16) % 4
    oy, ox = int(u[1] * (size + 1)), int(u[2] * (size + 1))
    tile = bank[k, oy:oy + size, ox:ox + size]
    if flips & 1:
        tile = tile[::-1]
    if flips & 2:
        tile = tile[:, ::-1]
    return tile


def blur3(a: np.ndarray, weight: float) -> np.ndarray:
    """Blend of ``a`` with its 3x3 binomial blur, (1 - weight) * a + weight * blur(a); edges replicated."""
    if weight <= 0:
        return a
    p = np.concatenate([a[:1], a, a[-1:]], axis=0)
    b = (p[:-2] + F32(2) * p[1:-1] + p[2:]) * F32(0.25)
    p = np.concatenate([b[:, :1], b, b[:, -1:]], axis=1)
    b = (p[:, :-2] + F32(2) * p[:, 1:-1] + p[:, 2:]) * F32(0.25)
    return a + F32(weight) * (b - a)


# ------------------------------------------------------------------------------------------- stamps


def stamp(size: int, ys, xs, ry, rx=None, cos=None, sin=None, amp=1.0) -> np.ndarray:
    """Sum of compact bumps ``amp * (1 - q)_+^2`` centred at pixel coordinates (ys, xs).

    q = (u / rx)^2 + (v / ry)^2 with (u, v) the offset rotated by (cos, sin) (the ellipse's rx axis
    direction in (x, y)). Radii in pixels. All arguments broadcast over the n stamps. Vectorised: one
    gather over n windows and one ``bincount``. Returns float32 (size, size).
    """
    ys = np.asarray(ys, dtype=F32).ravel()
    xs = np.asarray(xs, dtype=F32).ravel()
    n = ys.size
    if n == 0:
        return np.zeros((size, size), F32)
    ry = np.broadcast_to(np.asarray(ry, dtype=F32), (n,))
    rx = ry if rx is None else np.broadcast_to(np.asarray(rx, dtype=F32), (n,))
    amp = np.broadcast_to(np.asarray(amp, dtype=F32), (n,))
    w = math.ceil(float(max(ry.max(), rx.max())))
    off = np.arange(-w, w + 1, dtype=np.int32)
    iy = np.floor(ys).astype(np.int32)[:, None, None] + off[None, :, None]
    ix = np.floor(xs).astype(np.int32)[:, None, None] + off[None, None, :]
    dy = (iy.astype(F32) + F32(0.5)) - ys[:, None, None]
    dx = (ix.astype(F32) + F32(0.5)) - xs[:, None, None]
    if cos is not None:
        c = np.broadcast_to(np.asarray(cos, dtype=F32), (n,))[:, None, None]
        s = np.broadcast_to(np.asarray(sin, dtype=F32), (n,))[:, None, None]
        dx, dy = c * dx + s * dy, c * dy - s * dx
    q = (dx / rx[:, None, None]) ** 2 + (dy / ry[:, None, None]) ** 2
    val = bump(q) * amp[:, None, None]
    ok = (val > 0) & (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    idx = (iy * size + ix)[ok]
    out = np.bincount(idx, weights=val[ok], minlength=size * size)
    return out.astype(F32).reshape(size, size)


def walk(rng: np.random.Generator, y0: float, x0: float, direction: complex, n: int, step: float,
         turn_sd: float, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random curve of ``n`` points ``step`` apart, from (y0, x0) heading along ``direction``.

    direction is a unit complex number x + iy; each step turns by about ``drift + N(0, turn_sd)``
    radians (rational rotations, so only basic ops). Returns (ys, xs) float64 arrays.
    """
    t = rng.normal(drift, turn_sd, n) * 0.5
    rot = ((1 - t * t) + 2j * t) / (1 + t * t)
    d = direction * np.cumprod(rot)
    pos = complex(x0, y0) + step * np.cumsum(d)
    return pos.imag, pos.real


def line_stamps(ys: np.ndarray, xs: np.ndarray, radius: np.ndarray | float, spacing: float):
    """Amplitude per point so that bumps of ``radius`` every ``spacing`` pixels sum to ~1 on the centre line."""
    r = np.maximum(np.asarray(radius, dtype=np.float64), 1e-3)
    return spacing / (r * (16.0 / 15.0))


def segment_d2(yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    """Squared distance of every grid point to the segment (y0, x0)-(y1, x1), same units as the grid."""
    vy, vx = F32(y1 - y0), F32(x1 - x0)
    ll = float(vy * vy + vx * vx) or 1e-12
    py, px = yy - F32(y0), xx - F32(x0)
    t = (py * vy + px * vx) * F32(1.0 / ll)
    _clip_ufunc(t, F32(0), F32(1), out=t)
    ey, ex = py - t * vy, px - t * vx
    return ey * ey + ex * ex


# ----------------------------------------------------------------------------------------- the glyph

_R = ("####.",
      "#...#",
      "#...#",
      "####.",
      "#.#..",
      "#..#.",
      "#...#")
GLYPH_R = np.array([[ch == "#" for ch in row] for row in _R], dtype=bool)


def glyph_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixels of an "R" laterality marker in a top corner: bool (size, size).

    5 x 7 bitmap scaled by an integer cell of about 1.2 % of the side (at least 1 px), placed in
    the top-left or top-right corner with a margin of 3-7 % of the side.
    """
    cell = max(1, round(0.012 * size))
    g = np.repeat(np.repeat(GLYPH_R, cell, axis=0), cell, axis=1)
    gh, gw = g.shape
    lo, hi = max(1, round(0.03 * size)), max(2, round(0.07 * size))
    my, mx = (int(v) for v in rng.integers(lo, hi, 2))
    right = bool(rng.integers(0, 2))
    x0 = size - mx - gw if right else mx
    out = np.zeros((size, size), bool)
    out[my:my + gh, x0:x0 + gw] = g
    return out


# ------------------------------------------------------------------------------- speed helpers


@lru_cache(maxsize=16)
def _white_bank(size: int, channels: int) -> np.ndarray:
    """Uniform white noise, zero mean and unit std, float32 (channels, 2 * size, 2 * size), fixed seed."""
    rng = np.random.default_rng(derive_seed("medxai.synthetic.white", size, channels))
    u = rng.random((channels, 2 * size, 2 * size), dtype=np.float64).astype(F32)
    out = (u - F32(0.5)) * F32(math.sqrt(12.0))
    out.flags.writeable = False
    return out


def white(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """A (channels, size, size) window of cached white noise (unit std) at a random offset; read-only view."""
    bank = _white_bank(size, channels)
    u = rng.random(2)
    oy, ox = int(u[0] * (size + 1)), int(u[1] * (size + 1))
    return bank[:, oy:oy + size, ox:ox + size]


@lru_cache(maxsize=16)
def grid_half(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (fractions of the side) of a half-resolution grid, (n, n) with n = ceil(size / 2):
    the centres of 2 x 2 pixel blocks, so that :func:`upsample2` maps it back onto :func:`grid`."""
    n = (size + 1) // 2
    c = (np.arange(n, dtype=F32) * F32(2) + F32(1)) / F32(size)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def upsample2(lo: np.ndarray, size: int) -> np.ndarray:
    """Bilinear 2x upsampling of a :func:`grid_half` field (n, n) onto the full grid (size, size), contiguous.

    Each full pixel takes 3/4 of its block's value and 1/4 of the nearest other block (edges replicated),
    so the result is exactly zero wherever the 2 x 2 neighbourhood of blocks is zero.
    """
    n = lo.shape[0]
    p = np.concatenate([lo[:, :1], lo, lo[:, -1:]], axis=1)
    mid = F32(0.75) * p[:, 1:-1]
    wide = np.empty((n, 2 * n), F32)
    wide[:, 0::2] = mid + F32(0.25) * p[:, :-2]
    wide[:, 1::2] = mid + F32(0.25) * p[:, 2:]
    p = np.concatenate([wide[:1], wide, wide[-1:]], axis=0)
    mid = F32(0.75) * p[1:-1]
    out = np.empty((2 * n, 2 * n), F32)
    out[0::2] = mid + F32(0.25) * p[:-2]
    out[1::2] = mid + F32(0.25) * p[2:]
    return out[:size, :size] if 2 * n != size else out


def support(alpha: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding slices of the non-zero pixels of a 2-D field, or None when it is all zero."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha[rows[0]:rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def window(size: int, cy: float, cx: float, ry: float, rx: float | None = None) -> tuple[slice, slice]:
    """Pixel slices covering the box of half-sizes (ry, rx) (fractions of the side) around (cy, cx), clipped."""
    rx = ry if rx is None else rx
    y0, y1 = max(0, math.floor((cy - ry) * size)), min(size, math.ceil((cy + ry) * size) + 1)
    x0, x1 = max(0, math.floor((cx - rx) * size)), min(size, math.ceil((cx + rx) * size) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def rgb(r: float, g: float, b: float) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 array, to broadcast over channel-first images."""
    return np.array([r, g, b], F32)[:, None, None]


def blend(img: np.ndarray, alpha: np.ndarray, colour, where: tuple[slice, slice] | None = None) -> None:
    """In place on a channel-first image (C, H, W): img = img + alpha * (colour - img), over the support
    of a full-size ``alpha``, or over the window ``where`` for an ``alpha`` already cut to that window.

    ``colour`` is a (C, 1, 1) colour or a (C, h, w) array shaped like the window.
    """
    if where is None:
        where = support(alpha)
        if where is None:
            return
        alpha = alpha[where]
    sub = img[:, where[0], where[1]]
    sub += alpha[None] * (colour - sub)


#: Class gratings of the ``nonrobust`` texture, one per class: (a, b, P) draws
#: sin(2 pi (a y + b x) / P + phase) at pixel (y, x): 0 vertical / 1 horizontal stripes of period 4 px,
#: 2 / 3 the two diagonals (period 2.8 px), 4 a steeper oblique (period 2.7 px).
GRATINGS = ((0, 1, 4), (1, 0, 4), (1, 1, 4), (1, -1, 4), (2, 1, 6))


@lru_cache(maxsize=16)
def _grating_index(size: int, cls: int) -> np.ndarray:
    """(a y + b x) mod P of class ``cls``'s grating at every pixel, intp (size, size), read-only."""
    a, b, p = GRATINGS[cls]
    y, x = np.arange(size)[:, None], np.arange(size)[None, :]
    idx = ((a * y + b * x) % p).astype(np.intp)
    idx.flags.writeable = False
    return idx


def grating(size: int, cls: int, phase: float) -> np.ndarray:
    """Class ``cls``'s grating (``GRATINGS``) at ``phase`` (radians): float32 (size, size) in [-1, 1].

    The P distinct values come from ``unit`` (rounded trig on scalars), so the bytes match on any machine.
    """
    if not 0 <= cls < len(GRATINGS):
        raise ValueError(f"grating class must be in [0, {len(GRATINGS)}), got {cls}")
    p = GRATINGS[cls][2]
    vals = np.array([unit(2 * math.pi * m / p + phase)[1] for m in range(p)], F32)
    return vals[_grating_index(size, cls)]
