"""MRI artefacts, made where MRI makes them: in k-space (the image's centred Fourier transform).

Every k-space artefact is ``out = min(|F^-1(A(F x))|, 1)``: the spectrum K = fftshift(fftn(x)) over
the trailing spatial dims is altered by A, transformed back, and shown as a magnitude image (an MR
scanner stores magnitudes, so a shifted or one-sided spectrum gives no negative values). The one
step that is a clip is the display window ``min(., 1)``: ringing, ghosts and noise may lie above the
clean image's white and saturate there (part of the model, as a scanner's stored range saturates).
The ``*_image`` helpers return the complex image before that step. Line index i along the phase-
encode axis (dim -2) has frequency ``i - n // 2`` cycles per field of view. The spatial code runs
over the trailing dims, so the functions take (B, C, H, W) now and (B, C, D, H, W) later (shifts,
spikes and the phase-encode axis act in the last two dims).
"""

from __future__ import annotations

import itertools
import math

import torch

from medxai.corruptions.base import rand, randn, register, size_scale

#: (rigid shift in px at 224, fraction of phase-encode lines acquired after the move), levels 1-5.
MOTION = ((3.0, 0.1), (5.0, 0.15), (8.0, 0.2), (10.0, 0.25), (12.0, 0.3))
#: (period n of the scaled lines = number of ghosts, intensity s: those lines are scaled by 1 - s).
GHOSTING = ((4, 0.2), (4, 0.4), (4, 0.6), (4, 0.8), (4, 1.0))
#: (spike magnitude over the spectrum's peak |K|max, spike radius as a fraction of the Nyquist radius).
SPIKE = ((0.1, 0.4), (0.2, 0.4), (0.35, 0.4), (0.5, 0.4), (0.75, 0.4))
#: kept radius of the spectrum as a fraction of the Nyquist radius (MONAI GibbsNoise alpha = 1 - rho / sqrt 2).
GIBBS = (0.8, 0.65, 0.5, 0.4, 0.3)
#: (polynomial degree d, coefficient range c: coefficients ~ U(-c, c)); torchio's default is (3, 0.5).
BIAS = ((1, 0.1), (2, 0.2), (2, 0.3), (3, 0.4), (3, 0.5))
BIAS_MAX_DEGREE = 3
#: Rician noise sigma (per real and imaginary part, in units of the image's white = 1).
RICIAN = (0.02, 0.04, 0.06, 0.09, 0.12)


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """Centred k-space ``fftshift(fftn(x))`` over the trailing spatial dims (complex, same shape)."""
    d = _dims(x)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=d), dim=d)


def from_spectrum(k: torch.Tensor) -> torch.Tensor:
    """Inverse of ``spectrum``: the complex image ``ifftn(ifftshift(k))``."""
    d = _dims(k)
    return torch.fft.ifftn(torch.fft.ifftshift(k, dim=d), dim=d)


def magnitude(z: torch.Tensor) -> torch.Tensor:
    """The magnitude image in the display window: ``min(|z|, 1)`` (float32)."""
    return z.abs().clamp(max=1.0).float()


def _freq(n: int, like: torch.Tensor) -> torch.Tensor:
    """Frequencies in cycles per field of view of the centred layout: i - n // 2."""
    return torch.arange(n, device=like.device, dtype=torch.float32) - n // 2


def _lines(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (B, H) or (B, H, W) tensor so it broadcasts over (B, C, ..., H, W)."""
    extra = x.ndim - 4
    if t.ndim == 2:
        return t.view(t.shape[0], 1, *([1] * extra), t.shape[1], 1)
    return t.view(t.shape[0], 1, *([1] * extra), *t.shape[1:])


def shift_lines(k: torch.Tensor, moved: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """Give the phase-encode lines where ``moved`` (B, H) is true the phase ramp of a shift by
    (ty, tx) px (B,): ``K(k) exp(-2 pi i (k_y t_y / H + k_x t_x / W))`` (Fourier shift theorem)."""
    b, h, w = k.shape[0], k.shape[-2], k.shape[-1]
    phase = -2 * math.pi * (_freq(h, k).view(1, h, 1) * ty.view(b, 1, 1) / h
                            + _freq(w, k).view(1, 1, w) * tx.view(b, 1, 1) / w)
    ramp = torch.polar(torch.ones_like(phase), phase)
    return torch.where(_lines(moved, k), k * _lines(ramp, k), k)


def motion_image(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Complex image of ``kspace_motion``: a fraction f of the phase-encode lines (chosen per image
    by ranking u ~ U(0, 1) per line, so a larger f adds lines; the centre line never moves) takes
    the phase ramp of a rigid shift t of |t| = shift * s px in a direction theta ~ U(0, 2 pi)
    (``shift_lines``; Shaw et al. 2019, torchio Motion: k-space composed of moved and still parts)."""
    shift, frac = MOTION[severity - 1]
    b, h = x.shape[0], x.shape[-2]
    theta = rand((b,), gen, x) * 2 * math.pi
    u = rand((b, h), gen, x)
    u[:, h // 2] = 2.0  # the centre line is acquired before the move
    moved = u.argsort(1).argsort(1) < round(frac * h)
    t = shift * size_scale(x)
    return from_spectrum(shift_lines(spectrum(x), moved, t * torch.sin(theta), t * torch.cos(theta)))


@register("kspace_motion", table=MOTION, kind="mri", source="Shaw et al. 2019; torchio RandomMotion", volumes=True)
def kspace_motion(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Rigid motion during the scan: ``min(|F^-1 K'|, 1)`` with K' from ``motion_image``;
    (shift px at 224, fraction of lines) = (3, .1), (5, .15), (8, .2), (10, .25), (12, .3)."""
    return magnitude(motion_image(x, severity, gen))


def ghosting_image(x: torch.Tensor, severity: int) -> torch.Tensor:
    """Complex image of ``ghosting``: every n-th phase-encode line (index i with i % n == 0 in the
    centred layout) is scaled by 1 - s, the centre line restored (torchio Ghosting, restore=None)."""
    n, s = GHOSTING[severity - 1]
    h = x.shape[-2]
    i = torch.arange(h, device=x.device)
    scale = torch.where((i % n == 0) & (i != h // 2), 1.0 - s, 1.0).view(h, 1)
    return from_spectrum(spectrum(x) * scale)


@register("ghosting", table=GHOSTING, kind="mri", source="torchio RandomGhosting (Perez-Garcia et al. 2021)",
          volumes=True)
def ghosting(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Periodic motion (breathing, pulsation): n ghosts spaced H / n along the phase-encode axis;
    (n, s) = (4, 0.2) .. (4, 1.0); see ``ghosting_image``."""
    return magnitude(ghosting_image(x, severity))


def spike_image(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Complex image of ``spike``: ``K'(k0) = K(k0) + r max|K|`` at one k0 (one-sided, as torchio
    Spike), k0 = round(rho (H/2 sin theta, W/2 cos theta)), theta ~ U(0, 2 pi) per image; other
    spatial dims (3-D) at their centre. For x >= 0, max|K| = K(0) = sum x, so the stripes have
    amplitude r * mean(x)."""
    r, rho = SPIKE[severity - 1]
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    theta = rand((b,), gen, x) * 2 * math.pi
    iy = (h // 2 + torch.round(rho * h / 2 * torch.sin(theta))).clamp(0, h - 1)
    ix = (w // 2 + torch.round(rho * w / 2 * torch.cos(theta))).clamp(0, w - 1)
    spot = (_freq(h, x).view(1, h, 1) + h // 2 == iy.view(b, 1, 1)) & (_freq(w, x).view(1, 1, w) + w // 2
                                                                         == ix.view(b, 1, 1))
    for dim in range(2, x.ndim - 2):  # 3-D: the central plane of every other spatial dim
        centre = torch.arange(x.shape[dim], device=x.device) == x.shape[dim] // 2
        spot = spot.unsqueeze(1) & centre.view(1, -1, *([1] * (spot.ndim - 1)))
    k = spectrum(x)
    peak = k.abs().flatten(2).amax(2).view(b, x.shape[1], *([1] * (x.ndim - 2)))
    return from_spectrum(k + r * peak * spot.unsqueeze(1))


@register("spike", table=SPIKE, kind="mri", source="torchio RandomSpike (herringbone artefact)", volumes=True)
def spike(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Herringbone stripes from one k-space spike of r = (.1, .2, .35, .5, .75) times the spectrum's
    peak at 0.4 of the Nyquist radius; see ``spike_image``."""
    return magnitude(spike_image(x, severity, gen))


def gibbs_mask(x: torch.Tensor, rho: float) -> torch.Tensor:
    """Kept k-space: ``sum_d ((i_d - n_d // 2) / (n_d / 2))^2 <= rho^2`` over the spatial dims (bool)."""
    sq = torch.zeros((), device=x.device)
    for j, n in enumerate(x.shape[2:]):
        f = (_freq(n, x) / (n / 2)) ** 2
        sq = sq + f.view(*([1] * j), n, *([1] * (x.ndim - 3 - j)))
    return sq <= rho**2


def gibbs_image(x: torch.Tensor, severity: int) -> torch.Tensor:
    """Complex image of ``gibbs``: the spectrum outside a disc of rho times the Nyquist radius set to 0."""
    return from_spectrum(spectrum(x) * gibbs_mask(x, GIBBS[severity - 1]))


@register("gibbs", table=GIBBS, kind="mri", source="MONAI GibbsNoise (Morelli et al. 2011)", volumes=True)
def gibbs(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Truncation ringing: k-space kept within rho = (.8, .65, .5, .4, .3) of the Nyquist radius
    (a fraction of the image's own spectrum, so it does not scale: ringing period ~ 2 / rho px)."""
    return magnitude(gibbs_image(x, severity))


def bias_exponents(ndim: int, degree: int) -> list[tuple[int, ...]]:
    """Monomial exponents with total degree <= ``degree`` over ``ndim`` axes, in torchio's order."""
    return [e for e in itertools.product(range(degree + 1), repeat=ndim) if sum(e) <= degree]


def bias_log_field(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """``L = sum_e a_e prod_d u_d^e_d`` (B, 1, *spatial), u_d = linspace(-1, 1) along each spatial
    axis, a_e = c (2 v_e - 1), v_e ~ U(0, 1): drawn for every monomial up to degree 3 (the same
    draws at every level), those of degree <= d used."""
    degree, c = BIAS[severity - 1]
    spatial = x.shape[2:]
    all_e = bias_exponents(len(spatial), BIAS_MAX_DEGREE)
    coef = c * (2 * rand((x.shape[0], len(all_e)), gen, x) - 1)
    axes = [torch.linspace(-1, 1, n, device=x.device) for n in spatial]
    log = torch.zeros((x.shape[0], 1, *spatial), device=x.device)
    for j, e in enumerate(all_e):
        if sum(e) > degree:
            continue
        term = torch.ones(spatial, device=x.device)
        for d, (ax, p) in enumerate(zip(axes, e, strict=True)):
            term = term * ax.pow(p).view(*([1] * d), -1, *([1] * (len(spatial) - 1 - d)))
        log = log + coef[:, j].view(-1, *([1] * (len(spatial) + 1))) * term
    return log


@register("bias_field", table=BIAS, kind="mri", source="torchio RandomBiasField (Sudre et al. 2017)", volumes=True)
def bias_field(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Coil sensitivity: ``y = x exp(L)`` (``bias_log_field``), then ``y * max(x) / max(y)`` per
    image and channel (the scanner scales each image to its maximum), so no clip is needed;
    (d, c) = (1, .1), (2, .2), (2, .3), (3, .4), (3, .5)."""
    y = x * torch.exp(bias_log_field(x, severity, gen))
    d = _dims(x)
    return y * (x.amax(d, keepdim=True) / y.amax(d, keepdim=True).clamp_min(1e-12))


def rician_image(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Complex image of ``rician_noise``: ``(x + sigma n1) + i sigma n2``, n1, n2 ~ N(0, 1)."""
    sigma = RICIAN[severity - 1]
    n1 = randn(x.shape, gen, x)
    n2 = randn(x.shape, gen, x)
    return torch.complex(x + sigma * n1, sigma * n2)


@register("rician_noise", table=RICIAN, kind="mri", source="Gudbjartsson & Patz 1995; MONAI RandRicianNoise",
          volumes=True)
def rician_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    """Magnitude of complex Gaussian noise: ``min(sqrt((x + s n1)^2 + (s n2)^2), 1)``,
    sigma = (.02, .04, .06, .09, .12); background becomes Rayleigh (mean sigma sqrt(pi / 2))."""
    return magnitude(rician_image(x, severity, gen))
