"""``fundus-dr``: colour fundus photographs graded for diabetic retinopathy (ordinal 0-4).

Mirrors the Kaggle Diabetic Retinopathy Detection data (EyePACS; ``trainLabels.csv`` with levels
0-4, about 73 / 7 / 15 / 2.5 / 2.5 %): a circular field of view on black (sometimes clipped at top
and bottom), optic disc with cup, darker macula and fovea, branching arcades of veins and arteries,
uneven illumination and pigmentation. The grade is caused by lesions, following the international
clinical DR scale:

- 0: none;
- 1: a few (1-4) microaneurysms, tiny dark-red dots;
- 2: more microaneurysms plus blot / flame haemorrhages in at most two quadrants and/or clusters of
  yellow hard exudates;
- 3: haemorrhages (3-6 each) in at least three quadrants around the fovea, with microaneurysms,
  often exudates and cotton-wool spots;
- 4: neovascularisation (tufts of fine tangled vessels on the disc or along an arcade) plus any
  of the lesions above.

Mask = the pixels of every lesion drawn (empty for grade 0). Lesion sizes scale with the image but
never fall below about one pixel, so they stay visible at 64 px.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from medxai._util.seed import derive_seed
from medxai.data.synthetic._api import (
    ANATOMY,
    LESION,
    NOISE,
    Context,
    Rendered,
    StudySpec,
    draw_class,
    register,
    resolve_nonrobust,
    resolve_shares,
)
from medxai.data.synthetic._draw import (
    F32,
    blend,
    blur3,
    bump,
    clip,
    cos_sin,
    grid,
    line_stamps,
    rgb,
    smoothstep,
    stamp,
    support,
    texture,
    threshold,
    unit,
    walk,
    white,
    window,
)

CLASSES = ("0", "1", "2", "3", "4")
KAGGLE_SHARES = (0.73, 0.07, 0.15, 0.025, 0.025)

VESSEL_ABSORB = rgb(0.30, 0.62, 0.55)
HAEM_ABSORB = rgb(0.55, 0.85, 0.80)
EXUDATE = rgb(1.0, 0.90, 0.42)
COTTON_WOOL = rgb(0.95, 0.88, 0.78)


N_TREES = 16


@lru_cache(maxsize=8)
def _vessel_bank(s: int) -> np.ndarray:
    """``N_TREES`` vessel trees of a right-hand disc, uint8 (N, 2s, 2s) opacities, disc at canvas point (s, s).

    Built once per size from fixed seeds; images pick one, flip it and shift it onto their disc.
    """
    out = np.zeros((N_TREES, 2 * s, 2 * s), np.uint8)
    for k in range(N_TREES):
        a = np.random.default_rng(derive_seed("medxai.synthetic.fundus-vessels", s, k))
        vy, vx, vr, va = _vessel_tree(a, 2 * s, s, (0.5, 0.5), 1, a.uniform(0.44, 0.48))
        thin = vr <= 1.5
        field = stamp(2 * s, vy[thin], vx[thin], vr[thin], amp=va[thin])
        if (~thin).any():
            field += stamp(2 * s, vy[~thin], vx[~thin], vr[~thin], amp=va[~thin])
        out[k] = np.round(np.minimum(field, 1.0) * 255).astype(np.uint8)
    out.flags.writeable = False
    return out


def _vessels(a: np.random.Generator, s: int, disc_px: tuple[int, int], side: int) -> np.ndarray:
    """Vessel opacity float32 (s, s) for a disc centred on pixel corner ``disc_px`` (row, col)."""
    bank = _vessel_bank(s)
    k, flip = int(a.integers(0, N_TREES)), bool(a.integers(0, 2))
    tree = bank[k]
    if flip:
        tree = tree[::-1]
    if side < 0:
        tree = tree[:, ::-1]
    oy, ox = s - disc_px[0], s - disc_px[1]
    return tree[oy:oy + s, ox:ox + s].astype(F32) * F32(1 / 255)


def _vessel_tree(a: np.random.Generator, s: int, ref: int, disc: tuple[float, float], side: int, big_r: float):
    """Stamps (ys, xs, radius, amp) in pixels of a retinal vessel tree rooted at the disc.

    ``s`` is the canvas side, ``ref`` the image side that sets the scale (radii, field of view).
    """
    dy0, dx0 = disc[0] * s, disc[1] * s
    rpx = big_r * ref
    r_vein = max(0.75, 0.0095 * ref)
    r_min = 0.6
    ys, xs, rs, amps = [], [], [], []

    def add(y, x, r0, r1, amp):
        r = np.linspace(r0, r1, y.size)
        a_ = np.full(y.size, amp) * np.minimum(1.0, r / r_min)
        r = np.maximum(r, r_min)
        ddy, ddx = np.diff(y, prepend=y[0]), np.diff(x, prepend=x[0])
        spacing = np.sqrt(ddy * ddy + ddx * ddx)
        spacing[0] = spacing[1] if spacing.size > 1 else 0.5
        ys.append(y)
        xs.append(x)
        rs.append(r)
        amps.append(a_ * line_stamps(y, x, r, 1.0) * spacing)

    def branch(y, x, r0, length, amp, depth):
        if depth == 0 or y.size < 8:
            return
        for _ in range(int(a.integers(1, 4 if depth > 1 else 3))):
            k = int(a.integers(y.size // 6, max(y.size // 6 + 1, 5 * y.size // 6)))
            d = complex(x[min(k + 1, y.size - 1)] - x[k], y[min(k + 1, y.size - 1)] - y[k])
            d = d / (abs(d) or 1.0)
            ang = a.uniform(0.45, 1.1) * (1 if a.random() < 0.5 else -1)
            d = d * complex(*unit(ang))
            rb = r0 * (1 - 0.5 * k / y.size) * a.uniform(0.5, 0.7)
            lb = length * a.uniform(0.25, 0.5)
            step = max(0.5, 0.6 * rb)
            n = max(4, int(lb / step))
            by, bx = walk(a, y[k], x[k], d, n, step, 0.08, 0.0)
            add(by, bx, rb, rb * 0.5, amp)
            branch(by, bx, rb, lb, amp, depth - 1)

    temporal = -side
    for arcade in (-1, 1):  # superior, inferior
        for kind in range(2):  # vein, artery
            r0 = r_vein * (1.0 if kind == 0 else 0.75)
            amp = 1.0 if kind == 0 else 0.75
            th = a.uniform(0.95, 1.35) + (0.12 if kind else 0.0)
            c, sn = unit(th)
            d = complex(temporal * c, arcade * sn)
            length = rpx * a.uniform(0.95, 1.25)
            step = max(0.5, 0.6 * r0)
            n = int(length / step)
            turn = -temporal * arcade * a.uniform(1.4, 2.0) / n
            y, x = walk(a, dy0, dx0, d, n, step, 0.03, turn)
            add(y, x, r0, r0 * 0.45, amp)
            branch(y, x, r0, length, amp, 2)
    for _ in range(int(a.integers(2, 5))):  # nasal vessels
        th = a.uniform(-1.2, 1.2)
        c, sn = unit(th)
        d = complex(-temporal * c, sn)
        r0 = r_vein * a.uniform(0.55, 0.8)
        length = rpx * a.uniform(0.45, 0.8)
        step = max(0.5, 0.6 * r0)
        n = int(length / step)
        y, x = walk(a, dy0, dx0, d, n, step, 0.05, 0.0)
        add(y, x, r0, r0 * 0.5, 0.85)
        branch(y, x, r0, length, 0.85, 1)
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(rs), np.concatenate(amps)


QUADRANT_START = np.array([1.0, 1.5, 0.5, 0.0]) * math.pi  # angle ranges of quadrants 0-3 (y points down)


def _points(rng: np.random.Generator, n: int, geo: dict, quadrants=None, rmin=0.15, rmax=0.85):
    """n lesion centres (y, x), fractions of the side, inside the field of view and off the disc.

    ``quadrants``: None, or an int array (n,) giving each point's quadrant around the fovea (0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right). Vectorised rejection sampling, 6 candidates a round.
    """
    fy, fx, big_r = geo["fovea"][0], geo["fovea"][1], geo["R"]
    dy_, dx_, rd = geo["disc"][0], geo["disc"][1], geo["rd"]
    y, x = np.zeros(n), np.zeros(n)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        rad = big_r * np.sqrt(rng.uniform(rmin * rmin, rmax * rmax, (m, 6)))
        if quadrants is None:
            ang = rng.uniform(0, 2 * math.pi, (m, 6))
        else:
            ang = QUADRANT_START[np.asarray(quadrants)[todo]][:, None] + rng.uniform(0, 0.5 * math.pi, (m, 6))
        c, sn = cos_sin(ang)
        cy, cx = fy + rad * sn, fx + rad * c
        ok = ((cy - dy_) ** 2 + (cx - dx_) ** 2 > (1.7 * rd) ** 2) & (np.abs(cy - geo["center"][0]) < geo["ylim"])
        has, first = ok.any(axis=1), ok.argmax(axis=1)
        rows = np.flatnonzero(has)
        y[todo[rows]], x[todo[rows]] = cy[rows, first[rows]], cx[rows, first[rows]]
        todo = todo[~has]
    return y, x


def _tufts(l: np.random.Generator, s: int, centres: list[tuple[float, float]]):
    """Neovascular tufts: fine tortuous vessels folded into a small disc around each centre (pixels)."""
    ys, xs = [], []
    for cy_, cx_ in centres:
        cr = l.uniform(0.035, 0.06) * s
        k, n = int(l.integers(6, 11)), max(6, int(l.uniform(1.2, 2.4) * cr / 0.5))
        c0, s0 = cos_sin(l.uniform(0, 2 * math.pi, k))
        rr = cr * np.sqrt(l.random(k)) * 0.6
        dc, ds = cos_sin(l.uniform(0, 2 * math.pi, k))
        d0 = dc + 1j * ds
        t = (l.normal(0, 0.55, (k, n)) + l.choice([-0.25, 0.25], (k, 1))) * 0.5
        d = d0[:, None] * np.cumprod(((1 - t * t) + 2j * t) / (1 + t * t), axis=1)
        pos = (rr * (c0 + 1j * s0))[:, None] + 0.5 * np.cumsum(d, axis=1)
        dist = np.abs(pos) + 1e-6
        pos = pos * np.where(dist > cr, cr / dist, 1.0)  # fold the walk back into the tuft
        ys.append(cy_ * s + pos.imag.ravel())
        xs.append(cx_ * s + pos.real.ravel())
    return np.concatenate(ys), np.concatenate(xs)


def _lesions(ctx: Context, geo: dict):
    """Opacity fields (dark, exudate, cotton-wool), float32 (S, S) each, for the grade."""
    s, grade = ctx.size, int(ctx.label)
    l = ctx.stream(LESION)
    zero = np.zeros((s, s), F32)
    dark, exu, cws = zero, zero.copy(), zero.copy()
    if grade == 0:
        return dark, exu, cws
    # dark-red dots and blots, all in one stamp call: (y, x, ry, rx, cos, sin, amp) per stamp
    r_ma = max(0.9, 0.0075 * s)
    n_ma = int({1: l.integers(1, 5), 2: l.integers(4, 13), 3: l.integers(8, 21), 4: l.integers(0, 16)}[grade])
    y, x = _points(l, n_ma, geo)
    rm = r_ma * l.uniform(0.85, 1.35, n_ma)
    parts = [(y * s, x * s, rm, rm, np.ones(n_ma), np.zeros(n_ma), np.full(n_ma, 1.6))]

    haem_q = np.zeros(0, int)
    want_exu = False
    if grade == 2:
        kind = l.integers(0, 3)  # 0 haemorrhages, 1 exudates, 2 both
        if kind != 1:
            haem_q = l.permutation(4)[: l.integers(1, 3)]
        want_exu = kind != 0
    elif grade == 3:
        haem_q = l.permutation(4)[: l.integers(3, 5)]
        want_exu = l.random() < 0.5
    elif grade == 4:
        if l.random() < 0.5:
            haem_q = l.permutation(4)[: l.integers(1, 5)]
        want_exu = l.random() < 0.4
    if haem_q.size:
        per = l.integers(3, 7, haem_q.size) if grade == 3 else l.integers(1, 3, haem_q.size)
        py, px = _points(l, int(per.sum()), geo, quadrants=np.repeat(haem_q, per), rmin=0.2)
        py, px = py * s, px * s
        m = py.size
        flame = l.random(m) < 0.4
        rb = np.maximum(1.5, l.uniform(0.011, 0.026, m) * s)
        ry = np.where(flame, np.maximum(1.0, 0.4 * rb), rb * l.uniform(0.75, 1.0, m))
        rx = np.where(flame, rb * l.uniform(1.3, 1.9, m), rb * l.uniform(0.8, 1.2, m))
        # flames lie along the nerve-fibre direction, roughly radial from the disc
        vy, vx = py - geo["disc"][0] * s, px - geo["disc"][1] * s
        norm = np.sqrt(vy * vy + vx * vx) + 1e-6
        ca, sa = cos_sin(l.uniform(0, 2 * math.pi, m))
        c, sn = np.where(flame, vx / norm, ca), np.where(flame, vy / norm, sa)
        # each blot: a main stamp plus a satellite for an irregular outline
        jy, jx = l.normal(0, 0.35, m) * rb, l.normal(0, 0.35, m) * rb
        parts.append((py, px, ry, rx, c, sn, np.full(m, 1.8)))
        parts.append((py + jy, px + jx, 0.7 * ry, 0.7 * rx, c, sn, np.full(m, 1.8)))
    py, px, ry, rx, c, sn, amp = (np.concatenate(v) for v in zip(*parts, strict=True))
    dark = np.minimum(stamp(s, py, px, ry, rx, c, sn, amp=amp), F32(1)) * F32(0.93)
    if want_exu:
        k = int(l.integers(1, 4))
        cy_, cx_ = _points(l, k, geo, rmin=0.15, rmax=0.7)
        per = l.integers(5, 21, k)
        spread = np.repeat(l.uniform(0.025, 0.06, k), per)
        ca, sa = cos_sin(l.uniform(0, 2 * math.pi, per.sum()))
        ring = np.repeat(l.random(k) < 0.5, per)  # circinate rings or scattered clusters
        rad = spread * np.where(ring, l.uniform(0.7, 1.0, per.sum()), np.sqrt(l.uniform(0.1, 1.0, per.sum())))
        ey, ex = (np.repeat(cy_, per) + rad * sa) * s, (np.repeat(cx_, per) + rad * ca) * s
        re = max(0.8, 0.0045 * s) * l.uniform(0.8, 1.7, per.sum())
        exu = np.minimum(stamp(s, ey, ex, re, amp=2.0), F32(1)) * F32(0.92)
    if grade == 3 and l.random() < 0.5:
        k = int(l.integers(1, 4))
        cy_, cx_ = _points(l, k, geo, rmin=0.2, rmax=0.7)
        rc = max(2.0, 0.024 * s) * l.uniform(0.8, 1.3, k)
        cws = np.minimum(stamp(s, cy_ * s, cx_ * s, rc, rc * l.uniform(1.0, 1.6, k), amp=1.0), F32(1)) * F32(0.6)
    if grade == 4:
        k = int(l.integers(1, 3))
        centres = [geo["disc"]] if l.random() < 0.6 else []  # on the disc (NVD) and/or elsewhere (NVE)
        py, px = _points(l, k - len(centres), geo, rmin=0.35, rmax=0.7)
        centres += list(zip(py, px, strict=True))
        wy, wx = _tufts(l, s, centres)
        r_nv = max(0.55, 0.0035 * s)
        amp_nv = min(1.0, max(0.0035 * s, 0.45) / 0.55)
        nv = stamp(s, wy, wx, r_nv, amp=amp_nv * line_stamps(wy, wx, r_nv, 0.5))
        dark = np.maximum(dark, np.minimum(nv, F32(1)) * F32(0.95))
    return threshold(dark), threshold(exu), threshold(cws)


def render(ctx: Context) -> Rendered:
    s = ctx.size
    yy, xx = grid(s)
    a = ctx.stream(ANATOMY)
    px = 1.0 / s
    cy, cx = 0.5 + a.uniform(-0.02, 0.02), 0.5 + a.uniform(-0.02, 0.02)
    big_r = a.uniform(0.43, 0.485)
    dy, dx = yy - F32(cy), xx - F32(cx)
    r2 = (dy * dy + dx * dx) * F32(1.0 / big_r**2)
    fov = smoothstep(1.0, 1.0 - 2.0 * px / big_r, np.sqrt(r2))
    ylim = big_r
    if a.random() < 0.35:  # field of view clipped at top and bottom, as in many EyePACS photographs
        ylim = big_r * a.uniform(0.82, 0.93)
        fov *= smoothstep(ylim, ylim - 1.5 * px, np.abs(dy))
    side = 1 if a.random() < 0.5 else -1  # optic disc right (+1) or left (-1) of the fovea
    fy, fx = cy + a.uniform(-0.04, 0.04) * big_r, cx + a.uniform(-0.06, 0.06) * big_r
    disc_px = (round((fy - a.uniform(0.0, 0.1) * big_r) * s), round((fx + side * a.uniform(0.5, 0.62) * big_r) * s))
    disc = (disc_px[0] / s, disc_px[1] / s)
    rd = a.uniform(0.085, 0.11) * big_r
    geo = {"fovea": (fy, fx), "disc": disc, "rd": rd, "R": big_r, "center": (cy, cx), "ylim": ylim * 0.95}

    pig = a.random()
    gain = a.uniform(0.8, 1.15)
    base = rgb(0.95 - 0.28 * pig + a.uniform(-0.04, 0.04), 0.40 - 0.17 * pig + a.uniform(-0.06, 0.06),
               0.15 - 0.07 * pig + a.uniform(-0.04, 0.04)) * F32(gain)
    gy, gx = a.uniform(-0.3, 0.3), a.uniform(-0.3, 0.3)
    illum = F32(1.05) - F32(a.uniform(0.25, 0.55)) * r2 + (F32(gy) * dy + F32(gx) * dx) * F32(1.0 / big_r)
    illum = illum * (F32(1) + F32(a.uniform(0.03, 0.08)) * texture(a, s, 5)
                     + F32(a.uniform(0.01, 0.04)) * texture(a, s, 24))
    md2 = ((yy - F32(fy)) ** 2 + (xx - F32(fx)) ** 2) * F32(1.0 / (0.32 * big_r) ** 2)
    illum = illum * (F32(1) - F32(a.uniform(0.12, 0.3)) * bump(md2) - F32(0.12) * bump(md2 * F32(12)))
    img = illum[None] * base  # channel-first (3, H, W) until the end
    blur = a.uniform(0.2, 1.0) if a.random() < 0.5 else 0.0

    # optic disc and cup, computed in the disc's window only
    win = window(s, disc[0], disc[1], 1.1 * rd + 2 * px, rd + 2 * px)
    wy, wx = yy[win] - F32(disc[0]), xx[win] - F32(disc[1])
    dd = np.sqrt((wy * F32(1 / 1.1)) ** 2 + wx * wx) * F32(1.0 / rd)
    disc_a = blur3(smoothstep(1.0, 0.75, dd), blur)
    cup_a = F32(0.6) * smoothstep(0.55, 0.2, np.sqrt((wy * F32(1 / 1.1)) ** 2 + (wx + F32(side * 0.15 * rd)) ** 2)
                                  * F32(1.0 / rd))
    dcol = rgb(1.0, 0.80 + a.uniform(-0.06, 0.06), 0.50 + a.uniform(-0.08, 0.08)) * F32(gain)
    dl = np.minimum(illum[win] * F32(1.2) + F32(0.15), F32(1.15))[None]
    blend(img, disc_a, dcol * dl, where=win)
    blend(img, cup_a, rgb(1.0, 0.95, 0.82) * F32(gain) * dl, where=win)

    v = _vessels(a, s, disc_px, side) * F32(a.uniform(0.75, 1.0))
    v = blur3(v, blur)
    img *= F32(1) - v[None] * VESSEL_ABSORB
    curve = F32(a.uniform(-0.3, 0.4))

    inside = fov > 0.5
    dark, exu, cws = (f * inside for f in _lesions(ctx, geo))
    if ctx.lesions:
        sl = support(dark)
        if sl is not None:
            img[:, sl[0], sl[1]] *= F32(1) - dark[sl][None] * HAEM_ABSORB
        for field, colour in ((exu, EXUDATE), (cws, COTTON_WOOL)):
            sl = support(field)
            if sl is not None:
                loc = np.minimum(illum[sl] * F32(1.1), F32(1.0))[None] * F32(gain)
                blend(img, field[sl], colour * loc, where=sl)
    mask = (dark > 0) | (exu > 0) | (cws > 0)

    clip(img, 0, 1, out=img)
    img += curve * img * (F32(1) - img)
    nz = ctx.stream(NOISE)
    img += F32(nz.uniform(0.004, 0.025)) * white(nz, s, 3)
    img *= fov[None]
    return Rendered(image=img, mask=mask, glyph_value=(0.95, 0.95, 0.95))


def _resolve(options: dict) -> dict:
    return {**resolve_shares("fundus-dr", KAGGLE_SHARES, options), **resolve_nonrobust("fundus-dr", options)}


SPEC = register(StudySpec(
    name="fundus-dr", class_names=CLASSES, task="ordinal", channels=3, render=render,
    draw_label=draw_class, abnormal=lambda label: int(label) > 0, resolve=_resolve,
    mirrors="Kaggle Diabetic Retinopathy Detection (EyePACS colour fundus photographs, grades 0-4)",
))
