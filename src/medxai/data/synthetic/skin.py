"""``skin-lesion``: dermoscopy-like images of three lesion classes, nv / mel / bkl.

Mirrors the three-class HAM10000 setting (ISIC 2018; metadata ``dx`` in nv, mel, bkl; default
shares 75 / 12.5 / 12.5 % as among those three, ``balanced=True`` like the study's upsampling):
skin of varied tone with blotchy redness and illumination falloff, sometimes the dark circular rim
of the dermatoscope and hairs, and one lesion near the centre.

- nv (melanocytic naevus): round or oval, regular border, uniform brown with a faint pigment
  network and slightly darker centre.
- mel (melanoma): larger, asymmetric with an irregular border, and several colours: dark-brown and
  black blotches, a blue-grey veil, white regression areas. The colour variation is the evidence:
  the extra mask ``evidence`` marks those regions.
- bkl (benign keratosis): waxy, stuck-on, sharply demarcated, tan to yellow-grey, with a
  cerebriform keratin texture of ridges and fissures, milia-like cysts (white dots) and
  comedo-like openings (dark dots).

Mask = the lesion for every class (every image has a lesion); ``evidence`` is empty except for
melanomas. The shortcut marker ("R") is drawn in ink (or white on the dermatoscope's dark rim);
the shortcut follows melanoma.
"""

from __future__ import annotations

import math

import numpy as np

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
    texture,
    threshold,
    unit,
    walk,
    white,
    window,
)

CLASSES = ("nv", "mel", "bkl")
HAM_SHARES = (0.752, 0.125, 0.123)  # HAM10000: 6705 nv, 1113 mel, 1099 bkl


def _shape(yy, xx, cy, cx, radius, aspect, rot, harmonics):
    """Normalised radius rho / r(theta) of a star-shaped outline r(theta) = R (1 + sum a_k cos(k theta + phi_k)).

    Uses powers of the unit complex direction (no per-pixel trig). harmonics: list of (k, a_k, phi_k).
    """
    c, s = rot
    dy, dx = yy - F32(cy), xx - F32(cx)
    u = (F32(c) * dx + F32(s) * dy) * F32(1 / aspect)
    v = F32(c) * dy - F32(s) * dx
    rho = np.sqrt(u * u + v * v) + F32(1e-6)
    zr, zi = u / rho, v / rho  # (cos, sin) of the polar angle
    kr, ki = zr, zi
    rad = np.ones_like(rho)
    kmax = max((k for k, _, _ in harmonics), default=0)
    coef = {k: (a, phi) for k, a, phi in harmonics}
    for k in range(1, kmax + 1):
        if k > 1:
            kr, ki = kr * zr - ki * zi, kr * zi + ki * zr  # (cos k theta, sin k theta)
        if k in coef:
            a, phi = coef[k]
            cp, sp = unit(phi)
            rad = rad + F32(a * cp) * kr - F32(a * sp) * ki
    return rho / (F32(radius) * np.maximum(rad, F32(0.3)))


def _relative(inner: tuple[slice, slice], outer: tuple[slice, slice]) -> tuple[slice, slice]:
    """Slices of ``inner`` intersected with ``outer``, relative to ``outer``'s origin."""
    return tuple(slice(max(i.start, o.start) - o.start, max(max(i.start, o.start), min(i.stop, o.stop)) - o.start)
                 for i, o in zip(inner, outer, strict=True))


def _blob(l, yy, xx, cy, cx, r, jag=0.25):
    """A soft irregular blob opacity in [0, 1] with compact support."""
    h = [(k, l.uniform(0, jag) / k**0.5, l.uniform(0, 2 * math.pi)) for k in (2, 3, 4, 5)]
    q = _shape(yy, xx, cy, cx, r, l.uniform(0.8, 1.3), unit(l.uniform(0, math.pi)), h)
    return smoothstep(1.0, 0.55, q)


def render(ctx: Context) -> Rendered:
    s = ctx.size
    yy, xx = grid(s)
    a = ctx.stream(ANATOMY)
    tone = a.random()
    skin = rgb(0.93 - 0.2 * tone, 0.74 - 0.22 * tone, 0.66 - 0.25 * tone)
    skin = skin * F32(a.uniform(0.92, 1.05)) + rgb(a.uniform(-0.02, 0.03), a.uniform(-0.03, 0.02), 0)
    cy0, cx0 = 0.5 + a.uniform(-0.12, 0.12), 0.5 + a.uniform(-0.12, 0.12)
    r2 = ((yy - F32(cy0)) ** 2 + (xx - F32(cx0)) ** 2)
    illum = (F32(1.04) - F32(a.uniform(0.3, 0.8)) * r2) * F32(a.uniform(0.85, 1.12))
    red = clip(texture(a, s, 4), -1.5, 2.5) * F32(a.uniform(0.02, 0.06))  # blotchy erythema
    img = (illum * (F32(1) + F32(0.025) * texture(a, s, 40)))[None] * skin  # channel-first (3, H, W)
    img += red[None] * rgb(0.4, -0.6, -0.5)
    rim = a.random() < 0.35  # the dermatoscope's dark circular rim
    if rim:
        rr = a.uniform(0.52, 0.62)
        dark = smoothstep(rr - 0.03, rr + 0.01, np.sqrt((yy - F32(0.5)) ** 2 + (xx - F32(0.5)) ** 2))
        img *= (F32(1) - F32(0.92) * dark)[None]
    blur = a.uniform(0.2, 1.0) if a.random() < 0.5 else 0.0

    lbl = int(ctx.label)
    l = ctx.stream(LESION)
    cy, cx = 0.5 + l.uniform(-0.07, 0.07), 0.5 + l.uniform(-0.07, 0.07)
    rot = unit(l.uniform(0, math.pi))
    if lbl == 0:
        radius, aspect, jag, edge = l.uniform(0.13, 0.22), l.uniform(1.0, 1.3), 0.04, l.uniform(0.75, 0.88)
    elif lbl == 1:
        radius, aspect, jag, edge = l.uniform(0.17, 0.27), l.uniform(1.0, 1.4), 0.38, l.uniform(0.8, 0.92)
    else:
        radius, aspect, jag, edge = l.uniform(0.15, 0.24), l.uniform(1.05, 1.5), 0.07, l.uniform(0.9, 0.96)
    harm = [(k, l.uniform(0.2, 1.0) * jag / k, l.uniform(0, 2 * math.pi)) for k in range(1, 7)]
    # everything about the lesion is computed in its bounding window
    reach = radius * aspect * (1 + sum(h[1] for h in harm)) / (1 - 0.8 * jag) + 3.0 / s
    win = window(s, cy, cx, reach)
    wy, wx = yy[win], xx[win]
    q = _shape(wy, wx, cy, cx, radius, aspect, rot, harm)
    q = q * (F32(1) + F32(jag * 0.2) * texture(l, s, 16)[win])  # fine-scale notches on irregular borders
    les = threshold(blur3(smoothstep(1.0, edge, q), blur))
    ev = None
    tex = texture(l, s, 10)[win]
    if lbl == 0:
        base = rgb(0.56, 0.36, 0.24) * F32(l.uniform(0.8, 1.05))
        net = texture(l, s, 55)[win]
        shade = F32(1) - F32(0.15) * bump(q * q) + F32(0.05) * tex - F32(0.06) * np.abs(net)
        col = shade[None] * base
    elif lbl == 1:
        c1 = rgb(0.55, 0.35, 0.22) * F32(l.uniform(0.85, 1.05))
        c2 = rgb(0.4, 0.24, 0.15)
        mix = smoothstep(-0.8, 0.8, tex)[None]
        col = c1 + mix * (c2 - c1)
        kinds = list(l.permutation(4)[: l.integers(2, 5)])  # 0 black, 1 blue-grey veil, 2 white, 3 dark brown
        palette = {0: (0.08, 0.06, 0.06), 1: (0.40, 0.47, 0.58), 2: (0.9, 0.87, 0.86), 3: (0.22, 0.12, 0.07)}
        strength = {0: 0.95, 1: 0.8, 2: 0.8, 3: 0.9}
        ev = np.zeros(les.shape, F32)
        for kind in kinds:
            for _ in range(int(l.integers(1, 3))):
                ang, dist = l.uniform(0, 2 * math.pi), radius * l.uniform(0.0, 0.6)
                ca, sa = unit(ang)
                br = radius * l.uniform(0.22, 0.45)
                by, bx = cy + dist * sa, cx + dist * ca
                bw = window(s, by, bx, br * 1.3 * 1.7 + 2.0 / s)  # the blob's own window, inside the lesion's
                rel = _relative(bw, win)
                b = _blob(l, wy[rel], wx[rel], by, bx, br, 0.3)
                b *= clip(F32(0.8) + F32(0.35) * texture(l, s, 18)[win][rel], 0, 1)
                b = threshold(b * les[rel] * F32(strength[kind]), 0.08)
                sub = col[:, rel[0], rel[1]]
                sub += b[None] * (rgb(*palette[kind]) - sub)
                np.maximum(ev[rel], b, out=ev[rel])
    else:
        base = rgb(0.68, 0.55, 0.37) * F32(l.uniform(0.8, 1.05))
        # cerebriform keratin: gyri and fissures where two noise fields cross zero
        ridge = np.minimum(np.abs(texture(l, s, 30)[win]), np.abs(texture(l, s, 45)[win]) * F32(1.3))
        fis = smoothstep(0.35, 0.05, ridge)
        col = (F32(1) + F32(0.1) * tex - F32(0.4) * fis)[None] * base
        col += (F32(0.12) * smoothstep(0.3, 1.0, texture(l, s, 7)[win]))[None] * (F32(1) - col)  # waxy sheen
        ncy, ncy2 = int(l.integers(3, 10)), int(l.integers(3, 10))
        ca, sa = cos_sin(l.uniform(0, 2 * math.pi, ncy + ncy2))
        dist = radius * np.sqrt(l.uniform(0, 0.55, ncy + ncy2))
        dy_ = (cy + dist * sa) * s
        dx_ = (cx + dist * ca) * s
        rdot = max(0.9, 0.012 * s) * l.uniform(0.8, 1.5, ncy + ncy2)
        milia = np.minimum(stamp(s, dy_[:ncy], dx_[:ncy], rdot[:ncy], amp=1.8)[win], 1) * F32(0.9)
        comedo = np.minimum(stamp(s, dy_[ncy:], dx_[ncy:], rdot[ncy:], amp=1.8)[win], 1) * F32(0.85)
        col += milia[None] * (rgb(0.95, 0.93, 0.85) - col)
        col += comedo[None] * (rgb(0.18, 0.12, 0.08) - col)
    if ctx.lesions:
        blend(img, les, col * illum[win][None], where=win)
    mask = np.zeros((s, s), bool)
    mask[win] = les > 0
    evidence = np.zeros((s, s), bool)
    if ev is not None:
        evidence[win] = ev > 0

    if a.random() < 0.3:  # hairs on top of skin and lesion
        hy, hx, ha = [], [], []
        r = max(0.5, 0.0025 * s)
        amp_ = min(1.0, 0.0025 * s / 0.5)
        for _ in range(int(a.integers(1, 8))):
            y0, x0 = a.uniform(-0.1, 1.1) * s, a.uniform(-0.1, 1.1) * s
            d = complex(*unit(a.uniform(0, 2 * math.pi)))
            n = int(a.uniform(0.3, 0.9) * s / 0.5)
            hyk, hxk = walk(a, y0, x0, d, n, 0.5, 0.02)
            hy.append(hyk)
            hx.append(hxk)
            ha.append(np.full(hyk.size, amp_) * line_stamps(hyk, hxk, r, 0.5))
        hair = np.minimum(stamp(s, np.concatenate(hy), np.concatenate(hx), r, amp=np.concatenate(ha)), 1)
        blend(img, hair * F32(0.85), rgb(0.15, 0.1, 0.07))

    curve = F32(a.uniform(-0.25, 0.3))
    clip(img, 0, 1, out=img)
    img += curve * img * (F32(1) - img)
    nz = ctx.stream(NOISE)
    img += F32(nz.uniform(0.004, 0.02)) * white(nz, s, 3)
    glyph = (0.95, 0.95, 0.95) if rim else (0.12, 0.1, 0.25)
    return Rendered(image=img, mask=mask, glyph_value=glyph, extra_masks={"evidence": evidence})


SPEC = register(StudySpec(
    name="skin-lesion", class_names=CLASSES, task="multiclass", channels=3, render=render,
    draw_label=draw_class, abnormal=lambda label: int(label) == 1,
    resolve=lambda o: {**resolve_shares("skin-lesion", HAM_SHARES, o), **resolve_nonrobust("skin-lesion", o)},
    mirrors="HAM10000 / ISIC 2018 dermoscopy, three classes nv, mel, bkl", extra_masks=("evidence",),
))
