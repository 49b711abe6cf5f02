"""Chest radiographs: ``cxr-pneumonia`` (binary) and ``cxr-multilabel`` (five CheXpert findings).

The anatomy is a frontal (PA/AP) radiograph in grayscale: soft tissue of the neck, shoulders and
trunk on a dark background, two radiolucent lung fields with hila and faint vascular markings,
posterior and anterior ribs, clavicles, the spine, the mediastinum and heart, domed hemidiaphragms
with sharp costophrenic angles, sometimes a gastric bubble. Each image varies in position, scale,
rotation, thorax shape, exposure, contrast, blur and noise. Densities add up in an attenuation map
that a per-image tone curve turns into grey levels, so findings look like added tissue or fluid.

- ``cxr-pneumonia`` mirrors the Kaggle paediatric pneumonia data (Guangzhou, ``chest_xray/
  {train,val,test}/{NORMAL,PNEUMONIA}``; default shares 27 / 73 % as its train split): PNEUMONIA is
  patchy consolidation (one to three mottled patches) in one or both lungs; mask = the opacity, or
  with ``masks="box"`` the union of the bounding boxes of its connected parts (8-connected), as box
  annotations (CP-Child, Kvasir) are drawn: the ViT attention study scores maps against boxes.
- ``cxr-multilabel`` mirrors CheXpert's five evaluation findings, in any combination:
  Atelectasis (plate-like bands or a collapsed wedge in the lower zones), Cardiomegaly (heart wider
  than half the thorax, cardiothoracic ratio 0.55-0.68 against 0.38-0.47; mask = the heart),
  Consolidation (dense mottled patch), Edema (bilateral hazy perihilar opacity with Kerley B lines)
  and Pleural Effusion (fluid at a lung base with a meniscus, blunting the costophrenic angle).
  Labels use CheXpert's vocabulary: 1, 0, -1 (uncertain, share ``uncertain_share``) and NaN
  (blank, share ``blank_share``). A finding is present with probability ``prevalence``; an
  uncertain label hides a present finding drawn subtler (weaker) or an absent one; a blank label
  hides either. One mask per finding, (5, H, W). Findings are drawn independently, so two findings
  co-occur with probability ``prevalence[i] * prevalence[j]`` (defaults: 0.0625 to 0.09; 0.25 with
  ``balanced=True``) and an image has no finding with probability ``prod(1 - prevalence)`` (0.19).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medxai.data.synthetic._api import (
    ANATOMY,
    LABEL,
    LESION,
    NOISE,
    Context,
    Rendered,
    StudySpec,
    draw_class,
    register,
    resolve_shares,
)
from medxai.data.synthetic._draw import (
    F32,
    blur3,
    bump,
    clip,
    grid,
    grid_half,
    segment_d2,
    smoothstep,
    texture,
    threshold,
    unit,
    upsample2,
    white,
)
from medxai.errors import ConfigError

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
DEFAULT_PREVALENCE = (0.3, 0.3, 0.25, 0.25, 0.3)
PNEUMONIA_SHARES = (0.27, 0.73)  # Kaggle chest_xray/train: 1341 NORMAL, 3875 PNEUMONIA


class _Anatomy:
    """Per-image geometry in canonical coordinates (x, y fractions of the side, after a small affine)."""

    def __init__(self, a: np.random.Generator, s: int, coords: bool = True):
        self.s = s
        self.scale = a.uniform(0.9, 1.06)
        self.rot = unit(a.uniform(-0.06, 0.06))
        self.off = (a.uniform(-0.03, 0.03), a.uniform(-0.035, 0.035))
        self.px = 1.0 / (s * self.scale)  # one (full-resolution) pixel in canonical units
        if coords:
            self._coords(*grid(s))
        self.T = a.uniform(0.31, 0.38)  # thorax half-width
        self.top = a.uniform(0.1, 0.15)
        self.base = a.uniform(0.68, 0.77)  # costophrenic level (right)
        self.dome = a.uniform(0.05, 0.09)
        self.med = a.uniform(0.035, 0.055)  # half-width of the upper mediastinum
        self.base_l = self.base + a.uniform(0.0, 0.03)  # left hemidiaphragm usually lower
        self.ctr = a.uniform(0.38, 0.47)  # cardiothoracic ratio
        self.heart_h = a.uniform(0.12, 0.15)
        self.heart_shift = a.uniform(0.25, 0.4)
        self.tilt = unit(a.uniform(0.35, 0.6))

    def _coords(self, yy: np.ndarray, xx: np.ndarray) -> None:
        c, sn = self.rot
        py, px = yy - F32(0.5), xx - F32(0.5)
        k = F32(1 / self.scale)
        self.x = F32(0.5 + self.off[1]) + (F32(c) * px + F32(sn) * py) * k
        self.y = F32(0.5 + self.off[0]) + (F32(c) * py - F32(sn) * px) * k
        self.n = yy.shape[0]  # side of the grid these coordinates cover
        self.f = 1 if self.n == self.s else 2  # image pixels per grid pixel
        self.pxg = self.px * self.f  # one pixel of that grid in canonical units

    def box(self, y0: float, x0: float, y1: float, x1: float, margin: float = 0.0) -> tuple[slice, slice]:
        """Slices of this grid that cover the canonical box [y0, y1] x [x0, x1] grown by ``margin``."""
        c, sn = self.rot
        u, v = 0.5 * (x0 + x1) - 0.5 - self.off[1], 0.5 * (y0 + y1) - 0.5 - self.off[0]  # box centre
        hx, hy = 0.5 * abs(x1 - x0) + margin, 0.5 * abs(y1 - y0) + margin  # and half-extents
        k = self.s / self.f * self.scale
        cx = (0.5 + self.scale * (c * u - sn * v)) * self.s / self.f - 0.5
        cy = (0.5 + self.scale * (sn * u + c * v)) * self.s / self.f - 0.5
        ex = k * (abs(c) * hx + abs(sn) * hy) + 1.5  # the rotated box's extent, plus a pixel and a half
        ey = k * (abs(sn) * hx + abs(c) * hy) + 1.5
        n = self.n
        return (slice(min(max(0, math.floor(cy - ey)), n), min(max(0, math.ceil(cy + ey) + 1), n)),
                slice(min(max(0, math.floor(cx - ex)), n), min(max(0, math.ceil(cx + ex) + 1), n)))

    def ellipse(self, out: np.ndarray, cy: float, cx: float, ry: float, rx: float, amp: float = 1.0,
                op: str = "add") -> None:
        """Add (or max) ``amp * bump`` of an axis-aligned canonical ellipse into ``out``, over its box only."""
        sl = self.box(cy - ry, cx - rx, cy + ry, cx + rx)
        q = ((self.x[sl] - F32(cx)) * F32(1 / rx)) ** 2 + ((self.y[sl] - F32(cy)) * F32(1 / ry)) ** 2
        val = bump(q) * F32(amp)
        if op == "add":
            out[sl] += val
        else:
            np.maximum(out[sl], val, out=out[sl])

    def segment(self, out: np.ndarray, y0: float, x0: float, y1: float, x1: float, th: float,
                amp: float = 1.0, op: str = "max") -> None:
        """Max (or add) ``amp * bump(d^2 / th^2)`` of the distance d to a canonical segment, over its box."""
        sl = self.box(y0, x0, y1, x1, th)
        val = bump(segment_d2(self.y[sl], self.x[sl], y0, x0, y1, x1) * F32(1 / th**2)) * F32(amp)
        if op == "add":
            out[sl] += val
        else:
            np.maximum(out[sl], val, out=out[sl])

    def half(self) -> _Anatomy:
        """The same anatomy on the half-resolution grid (for the smooth parts; see ``upsample2``)."""
        lo = copy.copy(self)
        lo._coords(*grid_half(self.s))
        return lo

    def lung(self, side: int, soft: float = 1.0) -> np.ndarray:
        """Soft lung field of one side (-1 = patient's right = viewer's left), compact support."""
        base = self.base if side < 0 else self.base_l
        w = (self.T - self.med) / 2
        lc = 0.5 + side * (self.med + w)
        u = (self.x - F32(lc)) * F32(side / w)  # +1 lateral, -1 medial
        v = (self.y - F32(self.top)) * F32(1 / (base - self.top))
        u2 = u * u
        f = F32(0.55) * u2 + F32(0.45) * u2 * u2 + (F32(1) - v) ** 2
        e = min(6 * self.px / w, 0.3) * soft  # a few pixels, but never more than a third of the lung
        a1 = smoothstep(1.0, 1.0 - e, f)
        up = (u + F32(0.25)) * F32(1 / 1.25)
        vb = F32(1) - F32(self.dome / (base - self.top)) * (F32(1) - up * up)
        a2 = smoothstep(0.0, min(4 * self.px / (base - self.top), 0.08) * soft, vb - v)
        return a1 * a2

    def lung_point(self, rng: np.random.Generator, side: int, u_rng=(-0.4, 0.6), v_rng=(0.35, 0.85)):
        """A point (y, x) inside a lung, from lung coordinates u (medial -1 .. lateral +1) and v (apex 0 .. base 1)."""
        base = self.base if side < 0 else self.base_l
        w = (self.T - self.med) / 2
        lc = 0.5 + side * (self.med + w)
        v = rng.uniform(*v_rng)
        umax = math.sqrt(max(0.05, 1 - (1 - v) ** 2))
        u = rng.uniform(*u_rng) * umax
        return self.top + v * (base - self.top), lc + side * u * w

    def heart(self, ctr: float, ref_ctr: float | None = None) -> np.ndarray:
        """Heart thickness (ellipsoid profile, 0 outside) for a cardiothoracic ratio ``ctr``.

        The ellipse is tilted (apex down and to the patient's left) and scaled about a fixed centre,
        so a bigger heart contains a smaller one; its widest horizontal extent is ``ctr`` times the
        thorax width. Hidden below the diaphragm.
        """
        ref = self.ctr if ref_ctr is None else ref_ctr
        c, sn = self.tilt
        hh0 = self.heart_h
        hw0 = math.sqrt(max((ref * self.T) ** 2 - (hh0 * sn) ** 2, 1e-4)) / c
        hx = 0.5 + self.heart_shift * ref * self.T
        hy = self.base - 0.02 - 0.55 * hh0
        kw = ctr / ref
        hw, hh = hw0 * kw, hh0 * (1 + 0.35 * (kw - 1))
        dx, dy = self.x - F32(hx), self.y - F32(hy)
        q = ((F32(c) * dx + F32(sn) * dy) * F32(1 / hw)) ** 2 + ((F32(c) * dy - F32(sn) * dx) * F32(1 / hh)) ** 2
        h = np.sqrt(np.maximum(F32(1) - q, F32(0)))
        cut = self.base_l - 0.6 * self.dome
        return h * smoothstep(cut + 0.03, cut - 0.02, self.y)


def _ribs(an: _Anatomy, a: np.random.Generator) -> np.ndarray:
    """Posterior ribs (arcs from the spine curving down laterally) and fainter anterior ribs."""
    d = np.abs(an.x - F32(0.5))
    pitch = a.uniform(0.06, 0.075)
    r = (an.y - F32(0.6 * an.top) + F32(0.12) * d - F32(1.15) * d * d) * F32(1 / pitch)
    r = r + F32(0.2 * pitch) * r * r
    fr = r - np.floor(r)
    post = smoothstep(0.0, 0.1, fr) * smoothstep(0.45, 0.3, fr) * (F32(0.7) + F32(0.6) * smoothstep(0.3, 0.45, fr))
    ra = (an.y - F32(an.top) + F32(0.9) * d * d - F32(0.45) * d) * F32(1 / (pitch * 1.2))
    fa = ra - np.floor(ra)
    ant = smoothstep(0.0, 0.2, fa) * smoothstep(0.5, 0.3, fa)
    box = smoothstep(an.T + 0.03, an.T - 0.01, d) * smoothstep(0.03, 0.07, d)
    box = box * smoothstep(0.0, an.top, an.y) * smoothstep(an.base + 0.03, an.base - 0.04, an.y)
    return (post + F32(0.3) * ant) * box


def _anatomy_density(an: _Anatomy, a: np.random.Generator, lungs: np.ndarray):
    """Attenuation map of everything but the findings (body, air in lungs, bones, hila, markings).

    Returns (d0, g): the map is ``d0 + heart * g`` for a heart thickness ``heart`` (linear in it), so
    an enlarged heart changes pixels only where its thickness differs.
    """
    s, x, y = an.n, an.x, an.y
    d = np.abs(x - F32(0.5))
    neck = a.uniform(0.08, 0.12)
    bw = F32(neck) + F32(a.uniform(0.42, 0.49) - neck) * smoothstep(0.0, an.top + 0.05, y)
    body = smoothstep(0.0, 0.025, bw - d)
    depth = np.sqrt(np.maximum(F32(1) - (d / bw) ** 2, F32(0)))  # body thickness across the chest
    dens = (F32(0.3) + F32(0.25) * depth) * body
    # lung air: thickest in the middle of each lung and towards the bases
    lat = (d - F32(an.med)) * F32(1 / (an.T - an.med))
    ldepth = (F32(1) - F32(0.55) * (F32(2) * lat - F32(1)) ** 2) * (F32(0.75)
                                                              + F32(0.35) * smoothstep(an.top, an.base, y))
    coef = F32(a.uniform(0.3, 0.38))
    air = lungs * ldepth
    # hila and vascular markings, fading to the periphery
    hil = np.zeros((s, s), F32)
    for side in (-1, 1):
        an.ellipse(hil, an.top + 0.42 * (an.base - an.top), 0.5 + side * (an.med + 0.04), 0.12, 0.12 / 1.6**0.5)
    marks = texture(a, s, 26) + F32(0.5) * texture(a, s, 60)
    mk = F32(0.09) * hil * hil + F32(0.02) * marks * (F32(0.4) + hil)
    dens = dens - air * (coef - mk)
    dens = dens + F32(a.uniform(0.045, 0.075)) * _ribs(an, a) * body
    for side in (-1, 1):  # clavicles
        y0, x0 = an.top + a.uniform(0.02, 0.05), 0.5 + side * a.uniform(0.035, 0.05)
        y1, x1 = an.top - a.uniform(0.0, 0.04), 0.5 + side * (an.T + a.uniform(0.0, 0.04))
        an.segment(dens, y0, x0, y1, x1, a.uniform(0.011, 0.016), 0.08, op="add")
    spine = smoothstep(0.04, 0.022, d)
    vy = (y - F32(a.uniform(0, 0.05))) * F32(1 / 0.052)
    fv = vy - np.floor(vy)
    vert = F32(0.6) + F32(0.4) * smoothstep(0.0, 0.15, fv) * smoothstep(0.95, 0.8, fv)
    dens = dens + F32(0.05) * spine * vert
    carina = an.top + a.uniform(0.14, 0.2)
    trachea = smoothstep(0.016, 0.009, d) * smoothstep(carina + 0.01, carina - 0.03, y)
    dens = dens - F32(0.07) * trachea
    an.ellipse(dens, an.top + 0.13, 0.5 + an.med + 0.01, 0.035, 0.035, 0.06)  # aortic knob
    if a.random() < 0.5:  # gastric bubble under the left hemidiaphragm
        gy, gx = an.base_l + a.uniform(0.01, 0.04), 0.5 + an.T * a.uniform(0.35, 0.65)
        r = a.uniform(0.03, 0.05)
        bub = np.zeros((s, s), F32)
        an.ellipse(bub, gy, gx, r, 1.3 * r)
        dens = dens - F32(0.12) * bub * smoothstep(an.base_l - 0.02, an.base_l + 0.01, y)
    return dens, F32(0.8) * coef * air + F32(0.05)


def _patches(an: _Anatomy, l: np.random.Generator, lungs: np.ndarray, k: int, sides: list[int], dense: float):
    """Mottled consolidation patches inside the lungs: opacity float32 in [0, 1]."""
    s = an.n
    acc = np.zeros((s, s), F32)
    for j in range(k):
        side = sides[j % len(sides)]
        cy, cx = an.lung_point(l, side)
        rx, ry = l.uniform(0.055, 0.11), l.uniform(0.065, 0.13)
        for _ in range(3):  # each patch: a few overlapping lobules
            oy, ox = l.normal(0, 0.35) * ry, l.normal(0, 0.35) * rx
            an.ellipse(acc, cy + oy, cx + ox, ry, rx)
    mott = texture(l, s, 8) * F32(0.5) + texture(l, s, 18) * F32(0.35) + texture(l, s, 40) * F32(0.15)
    acc = acc * (F32(2) - np.minimum(acc, F32(1)))  # soft union of the lobules, rounded top
    field = np.minimum(acc, F32(1)) * (F32(0.65) + F32(0.5) * mott)  # ill-defined, patchy margins
    return threshold(clip(field, 0, 1) * lungs * F32(dense), 0.06)


def _tone(dens: np.ndarray, a: np.random.Generator) -> np.ndarray:
    lo, hi = a.uniform(0.0, 0.08), a.uniform(0.85, 1.0)
    img = F32(lo) + F32((hi - lo) / 0.66) * dens
    clip(img, 0, 1, out=img)
    g = F32(a.uniform(-0.35, 0.35))
    return img + g * img * (F32(1) - img)


def _finish(ctx: Context, img: np.ndarray) -> np.ndarray:
    nz = ctx.stream(NOISE)
    img += F32(nz.uniform(0.006, 0.03)) * white(nz, ctx.size, 1)[0]
    return img[None]


class _Pass:
    """The anatomy of one radiograph, drawn on a half-resolution grid from 96 px up (``lo``) and brought to
    full resolution on demand (``full``, bilinear). Findings are drawn on ``lo`` too, upsampled and
    thresholded at full resolution, so that their masks are exactly the pixels they change."""

    def __init__(self, ctx: Context):
        self.s = ctx.size
        self.a = ctx.stream(ANATOMY)
        self.half = self.s >= 96
        self.an = _Anatomy(self.a, self.s, coords=not self.half)
        self.lo = self.an.half() if self.half else self.an
        self.lung_lo = {-1: self.lo.lung(-1), 1: self.lo.lung(1)}
        self.lungs_lo = np.maximum(self.lung_lo[-1], self.lung_lo[1])

    def full(self, field: np.ndarray) -> np.ndarray:
        return upsample2(field, self.s) if self.half else field

    def finding(self, field_lo: np.ndarray, thr: float = 0.05) -> np.ndarray:
        """A finding's opacity at full resolution, zero below ``thr`` (its support is its mask)."""
        return threshold(self.full(field_lo), thr) if self.half else field_lo

    def density(self, heart_lo: np.ndarray):
        """(blurred full-resolution density, g at low resolution) for a heart thickness."""
        d0, g = _anatomy_density(self.lo, self.a, self.lungs_lo)
        blur = self.a.uniform(0.2, 1.0) if self.a.random() < 0.6 else 0.0
        return blur3(self.full(d0 + heart_lo * g), blur), g


# ------------------------------------------------------------------------------------ pneumonia


def render_pneumonia(ctx: Context) -> Rendered:
    ps = _Pass(ctx)
    heart_lo = ps.lo.heart(ps.an.ctr)
    dens, _ = ps.density(heart_lo)
    s = ctx.size
    opac = np.zeros((s, s), F32)
    if int(ctx.label) == 1:
        l = ctx.stream(LESION)
        sides = [[-1], [1], [-1, 1]][int(l.integers(0, 3))]
        k = int(l.integers(len(sides), 4))
        free = ps.lungs_lo * (F32(1) - heart_lo)
        opac = ps.finding(_patches(ps.lo, l, free, k, sides, l.uniform(0.8, 1.0)), 0.06)
        if ctx.lesions:
            dens += F32(0.36) * opac
    img = _finish(ctx, _tone(dens, ps.a))
    mask = _boxes(opac > 0) if ctx.options.get("masks") == "box" else opac > 0
    return Rendered(image=img, mask=mask, glyph_value=(0.97,))


def _boxes(mask: np.ndarray) -> np.ndarray:
    """The union of the bounding boxes of ``mask``'s 8-connected parts, bool (H, W)."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    out = np.zeros_like(mask, dtype=bool)
    for sl in ndimage.find_objects(lab):
        if sl is not None:
            out[sl] = True
    return out


def _resolve_pneumonia(options: dict) -> dict:
    """Class shares, and ``masks``: "lesion" (the opacity, default) or "box" (its parts' bounding boxes)."""
    masks = options.pop("masks", "lesion")
    if masks not in ("lesion", "box"):
        raise ConfigError(f"cxr-pneumonia: masks must be 'lesion' or 'box', got {masks!r}")
    out = resolve_shares("cxr-pneumonia", PNEUMONIA_SHARES, options)
    if masks == "box":  # only recorded when on, so default outputs (and their metadata) stay as they were
        out["masks"] = "box"
    return out


# ----------------------------------------------------------------------------------- multilabel


def _atelectasis(an: _Anatomy, l: np.random.Generator, free: np.ndarray, strength: float):
    s = an.n
    side = -1 if l.random() < 0.5 else 1
    if l.random() < 0.6:  # plate-like (discoid) bands in the lower zone
        acc = np.zeros((s, s), F32)
        for _ in range(int(l.integers(1, 4))):
            cy, cx = an.lung_point(l, side, (-0.3, 0.6), (0.55, 0.85))
            half = l.uniform(0.05, 0.09)
            c, sn = unit(l.uniform(-0.35, 0.35))
            th = max(1.3 * an.pxg, l.uniform(0.008, 0.014))
            an.segment(acc, cy - half * sn, cx - half * c, cy + half * sn, cx + half * c, th)
        field = acc * F32(1.3)
    else:  # lobar collapse: a dense wedge from the hilum down to the base
        base = an.base if side < 0 else an.base_l
        hy, hx = an.top + 0.45 * (base - an.top), 0.5 + side * (an.med + 0.03)
        ty, tx = base - 0.01, 0.5 + side * (an.med + l.uniform(0.08, 0.16))
        d2 = segment_d2(an.y, an.x, hy, hx, ty, tx)
        tt = clip(((an.y - F32(hy)) * F32(ty - hy) + (an.x - F32(hx)) * F32(tx - hx))
                     * F32(1 / ((ty - hy) ** 2 + (tx - hx) ** 2)), 0, 1)
        width = F32(0.015) + F32(l.uniform(0.05, 0.08)) * tt
        field = bump(d2 / (width * width)) * F32(1.2)
    return threshold(clip(field, 0, 1) * free * F32(strength))


def _edema(an: _Anatomy, l: np.random.Generator, free: np.ndarray, strength: float):
    acc = np.zeros((an.n, an.n), F32)
    for side in (-1, 1):
        hy = an.top + l.uniform(0.4, 0.5) * (an.base - an.top)
        hx = 0.5 + side * (an.med + l.uniform(0.03, 0.06))
        an.ellipse(acc, hy, hx, l.uniform(0.15, 0.2), l.uniform(0.13, 0.18))
    haze = clip(acc * F32(1.1), 0, 1) * (F32(0.85) + F32(0.3) * texture(l, an.n, 10))
    lines = np.zeros((an.n, an.n), F32)
    for side in (-1, 1):  # Kerley B lines: short horizontal lines at the lateral bases
        base = an.base if side < 0 else an.base_l
        for _ in range(int(l.integers(2, 5))):
            y0 = base - l.uniform(0.02, 0.12)
            xe = 0.5 + side * (an.T - l.uniform(0.0, 0.02))
            an.segment(lines, y0, xe, y0, xe - side * l.uniform(0.025, 0.04), max(1.2 * an.pxg, 0.005))
    return threshold(clip(np.maximum(haze * F32(0.75), lines * F32(0.8)), 0, 1) * free * F32(strength), 0.08)


def _effusion(an: _Anatomy, l: np.random.Generator, lungs_by_side: dict, strength: float):
    acc = F32(0)
    sides = [[-1], [1], [-1, 1]][int(l.integers(0, 3))]
    for side in sides:
        base = an.base if side < 0 else an.base_l
        level = base - max(l.uniform(0.07, 0.2) * (base - an.top), 2.5 * an.pxg)
        lat = np.abs(an.x - F32(0.5)) * F32(1 / an.T)  # 0 midline .. 1 lateral wall
        men = F32(level) - F32(l.uniform(0.04, 0.09)) * lat * lat  # meniscus rises laterally
        fluid = smoothstep(0.0, 0.03, an.y - men)
        acc = acc + fluid * lungs_by_side[side]
    return threshold(clip(acc, 0, 1) * F32(strength))


def render_multilabel(ctx: Context) -> Rendered:
    ps = _Pass(ctx)
    an, s = ps.an, ctx.size
    truth, severity = ctx.info["truth"], ctx.info["severity"]
    heart_n = ps.lo.heart(an.ctr)
    dens, g = ps.density(heart_n)
    masks = np.zeros((5, s, s), bool)
    if truth[1] == 1:
        lc = ctx.stream(LESION, 1)
        ctr = lc.uniform(0.55, 0.6) if severity[1] < 1 else lc.uniform(0.56, 0.68)
        heart_c = ps.lo.heart(ctr)
        masks[1] = ps.full(heart_c) > 0
        if ctx.lesions:  # added after the blur so that only heart pixels change
            dens += ps.full((heart_c - heart_n) * g)
    opac = None
    if any(truth[k] == 1 for k in (0, 2, 3, 4)):
        free = ps.lungs_lo * (F32(1) - heart_n)
        lo = ps.lo
        for k in (0, 2, 3, 4):
            if truth[k] != 1:
                continue
            l = ctx.stream(LESION, k)
            sev = float(severity[k])
            if k == 0:
                field = ps.finding(_atelectasis(lo, l, free, 0.7 * sev))
            elif k == 2:
                sides = [[-1], [1], [-1, 1]][int(l.integers(0, 3))]
                field = ps.finding(_patches(lo, l, free, int(l.integers(len(sides), 3)), sides,
                                            l.uniform(0.75, 1.0) * sev), 0.06)
            elif k == 3:
                field = ps.finding(_edema(lo, l, free, l.uniform(0.45, 0.65) * sev), 0.08)
            else:
                field = ps.finding(_effusion(lo, l, ps.lung_lo, l.uniform(0.85, 1.0) * sev))
            masks[k] = field > 0
            opac = field if opac is None else np.maximum(opac, field)
    if ctx.lesions and opac is not None:
        dens += F32(0.36) * opac
    img = _finish(ctx, _tone(dens, ps.a))
    return Rendered(image=img, mask=masks, glyph_value=(0.97,))


def _draw_multilabel(rng: np.random.Generator, options: Mapping[str, Any]) -> np.ndarray:
    """Reported labels (5,) float32 in {1, 0, -1, NaN}; truth and severity are redrawn by the renderer."""
    return _labels(rng, options)[0]


def _labels(rng: np.random.Generator, options: Mapping[str, Any]):
    """(reported labels, truth 0/1, severity) per finding: truth ~ Bernoulli(prevalence); the report is
    -1 with probability uncertain_share (a present finding then drawn at 55-75 % strength), else NaN
    with probability blank_share, else the truth."""
    u = rng.random((3, 5))
    prev = np.asarray(options["prevalence"])
    truth = (u[0] < prev).astype(np.int64)
    report = truth.astype(np.float32)
    unc = u[1] < options["uncertain_share"]
    blank = ~unc & (u[1] < options["uncertain_share"] + options["blank_share"])
    report[unc] = -1.0
    report[blank] = np.nan
    severity = np.where(unc & (truth == 1), 0.55 + 0.2 * u[2], 1.0)
    return report, truth, severity


def _render_ml(ctx: Context) -> Rendered:
    _, truth, severity = _labels(ctx.stream(LABEL), ctx.options)
    ctx.info["truth"], ctx.info["severity"] = truth, severity
    return render_multilabel(ctx)


def _resolve_ml(options: dict) -> dict:
    balanced = bool(options.pop("balanced", False))
    prev = options.pop("prevalence", None)
    if balanced and prev is not None:
        raise ConfigError("cxr-multilabel: give either balanced=True or prevalence=..., not both")
    if prev is None:
        prev = [0.5] * 5 if balanced else list(DEFAULT_PREVALENCE)
    elif np.isscalar(prev):
        prev = [float(prev)] * 5
    prev = [float(p) for p in prev]
    if len(prev) != 5 or any(not 0 <= p <= 1 for p in prev):
        raise ConfigError(f"cxr-multilabel: prevalence must be one or five probabilities, got {prev}")
    unc = float(options.pop("uncertain_share", 0.1))
    blank = float(options.pop("blank_share", 0.0))
    if not (0 <= unc <= 1 and 0 <= blank <= 1 and unc + blank <= 1):
        raise ConfigError(f"cxr-multilabel: uncertain_share and blank_share must be in [0, 1] with a sum <= 1, "
                          f"got {unc} and {blank}")
    return {"prevalence": prev, "balanced": balanced, "uncertain_share": unc, "blank_share": blank}


PNEUMONIA = register(StudySpec(
    name="cxr-pneumonia", class_names=("NORMAL", "PNEUMONIA"), task="binary", channels=1,
    render=render_pneumonia, draw_label=draw_class, abnormal=lambda label: int(label) == 1,
    resolve=_resolve_pneumonia,
    mirrors="Kaggle Chest X-Ray Images (Pneumonia), Guangzhou paediatric cohort",
))

MULTILABEL = register(StudySpec(
    name="cxr-multilabel", class_names=FINDINGS, task="multilabel", channels=1, render=_render_ml,
    draw_label=_draw_multilabel, abnormal=lambda label: bool(np.any(np.asarray(label) == 1)),
    resolve=_resolve_ml, mirrors="CheXpert (Stanford), five evaluation findings, uncertainty labels",
))
