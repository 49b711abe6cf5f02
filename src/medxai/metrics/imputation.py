"""Noisy linear imputation (ROAD, Rong et al. 2022) solved in torch.

Every removed pixel takes the weighted mean of its 8 neighbours, direct neighbours weighted
1/6 and diagonal ones 1/12 (the weights of the ROAD reference code, tleemann/road_evaluation,
also used by Quantus); neighbours outside the image are dropped and the remaining weights
renormalised. The removed pixels of one image form one sparse linear system

    d_i u_i - sum_{j removed, j ~ i} w_ij u_j = sum_{j kept, j ~ i} w_ij x_j,   d_i = sum_{j ~ i} w_ij,

shared by all channels. It is symmetric positive definite (a weighted graph Laplacian with
Dirichlet values at the kept pixels) whenever at least one pixel is kept; it is solved for all
images and channels at once by conjugate gradients, matrix-free (the operator is a masked 3x3
stencil), preconditioned by a symmetric multigrid V-cycle whose coarse operators are Galerkin
products P^T A P of bilinear interpolation P (damped Jacobi smoothing). Two accuracies:

- default for float32/16 images (``tol`` = ``PIXEL_TOL`` = 0.5/255): float32 CG, a system
  stopped once its last update moves no pixel by more than tol/4. Images are 8-bit, so two
  imputations whose every pixel differs by less than 0.5/255 quantise to the same image; the
  measured error is ~1e-4/255 to 0.03/255 (float32 rounding), tests/test_imputation_tolerance.py.
- exact (``tol="exact"``, ``rtol`` given, or float64 images): float64 CG with the float32
  preconditioner (iterative refinement) to relative residual ``rtol`` (1e-8), equal to a
  direct sparse solve (scipy's ``spsolve``) to ~1e-8.

Then ``noise`` * N(0, 1) is added to the imputed pixels.

If every pixel of an image is removed there is nothing to interpolate from: those pixels get 0
(then the noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medxai.errors import InputError
from medxai.explain.engine import for_chunks

__all__ = ["linear_imputation", "noisy_linear_imputation"]

W_DIRECT = 1.0 / 6.0
W_DIAGONAL = 1.0 / 12.0
_OFFS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # index 4 is the centre
_CENTRE = 4
PIXEL_TOL = 0.5 / 255  # half an 8-bit grey level of an image in [0, 1]
EXACT_RTOL = 1e-8
_UPDATE_SAFETY = 0.25  # stop once the last update is below tol / 4
_CACHE_PIXELS = 2**17  # CPU solve chunk: its working arrays stay in the core's cache


def _weight(dy: int, dx: int) -> float:
    return 0.0 if (dy, dx) == (0, 0) else (W_DIRECT if dy == 0 or dx == 0 else W_DIAGONAL)


def _sep(u: torch.Tensor) -> torch.Tensor:
    """[1, 2, 1] x [1, 2, 1] correlation of (..., H, W) with zero padding."""
    v = u * 2.0
    v[..., :, 1:].add_(u[..., :, :-1])
    v[..., :, :-1].add_(u[..., :, 1:])
    s = v * 2.0
    s[..., 1:, :].add_(v[..., :-1, :])
    s[..., :-1, :].add_(v[..., 1:, :])
    return s


def _neigh(u: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij u_j over the 8 neighbours (zero outside the image): sep(u)/12 - u/3."""
    s = _sep(u).mul_(1.0 / 12.0)
    return s.sub_(u, alpha=1.0 / 3.0)


class _Fine:
    """The fine operator A u = m * (d u - neighbours(m u)) on (N, C, H, W), u zero off the mask."""

    def __init__(self, m: torch.Tensor, d: torch.Tensor) -> None:
        self.m, self.d = m, d
        self.dm = d * m

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return (self.dm * u).sub_(_neigh(u).mul_(self.m))

    def coefficients(self) -> torch.Tensor:
        """The same operator as 9 coefficient fields (N, 9, H, W): A u = sum_k c_k * u(. + off_k)."""
        m = self.m[:, 0]
        mp = F.pad(m, (1, 1, 1, 1))
        h, w = m.shape[-2:]
        cs = []
        for dy, dx in _OFFS:
            if (dy, dx) == (0, 0):
                cs.append(self.dm[:, 0])
            else:
                cs.append(-_weight(dy, dx) * m * mp[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        return torch.stack(cs, 1)


class _Stencil:
    """A variable-coefficient 9-point operator (N, 9, h, w) applied to (N, C, h, w)."""

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c
        self.cc = [c[:, k : k + 1] for k in range(9)]

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        h, w = u.shape[-2:]
        up = F.pad(u, (1, 1, 1, 1))
        out = self.cc[_CENTRE] * u
        for k, (dy, dx) in enumerate(_OFFS):
            if k != _CENTRE:
                out.addcmul_(self.cc[k], up[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        return out


_W1 = {-1: 0.5, 0: 1.0, 1: 0.5}  # 1-D linear interpolation weights (vertex-centred)


def _coarse_size(n: int) -> int:
    """Coarse point J sits on fine point 2J; fine points 0..n-1 need J = 0..n//2."""
    return n // 2 + 1


def _coarsen_last(c: torch.Tensor) -> torch.Tensor:
    """1-D Galerkin product along the last axis: c (N, 3, 3, h, w), indexed [ky + 1, kx + 1], of
    a 9-point operator -> (N, 3, 3, h, w // 2 + 1) of (I x Px)^T A (I x Px), Px linear interpolation.

    A'[(ky, cx)](i, J) = sum_{ex, kx} W1[ex] c_(ky, kx)(i, 2J + ex) W1[fx], fx = ex + kx - 2 cx.
    """
    w = c.shape[-1]
    wc = _coarse_size(w)
    cp = F.pad(c, (1, 2 * wc - w))  # fine index j lives at j + 1
    out = c.new_zeros(*c.shape[:-1], wc)
    for ex in (-1, 0, 1):
        fld = cp[..., 1 + ex : 1 + ex + 2 * wc : 2]  # c_k(i, 2J + ex)
        for kx in (-1, 0, 1):
            for cx in (-1, 0, 1):
                fx = ex + kx - 2 * cx
                if -1 <= fx <= 1:
                    out[:, :, cx + 1].add_(fld[:, :, kx + 1], alpha=_W1[ex] * _W1[fx])
    return out


def _coarsen(c: torch.Tensor) -> torch.Tensor:
    """Galerkin product P^T A P of a 9-point operator (N, 9, h, w) with bilinear P; again 9-point.

    P = Py x Px puts coarse value J on fine 2J with weight 1 and on 2J + e with weight
    prod(1 - |e|/2); the product is taken one axis at a time (:func:`_coarsen_last` along x,
    then along y on the transposed stencil).
    """
    n, _, h, w = c.shape
    cx = _coarsen_last(c.reshape(n, 3, 3, h, w))
    cy = _coarsen_last(cx.transpose(1, 2).transpose(-2, -1))  # (n, [kx], [ky], wc, hc)
    return cy.transpose(1, 2).transpose(-2, -1).reshape(n, 9, _coarse_size(h), _coarse_size(w))


def _prolong(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear interpolation (N, C, hc, wc) -> (N, C, h, w): f[2J] = c[J], odd points the mean of
    their two (or four) coarse neighbours."""
    hc, wc = c.shape[-2:]
    return F.interpolate(c, size=(2 * hc - 1, 2 * wc - 1), mode="bilinear", align_corners=True)[..., :h, :w]


def _restrict(f: torch.Tensor, hc: int, wc: int) -> torch.Tensor:
    """The transpose of :func:`_prolong`: c[J] = sum_i P[i, J] f[i], weights 1, 1/2, 1/4."""
    h, w = f.shape[-2:]
    fp = F.pad(f, (1, 2 * wc - w, 1, 2 * hc - h))  # fine i at i + 1
    v = fp[..., 0 : 2 * wc - 1 : 2] + fp[..., 2 : 2 * wc + 1 : 2]
    v = torch.add(fp[..., 1 : 2 * wc : 2], v, alpha=0.5)
    c = v[..., 0 : 2 * hc - 1 : 2, :] + v[..., 2 : 2 * hc + 1 : 2, :]
    return torch.add(v[..., 1 : 2 * hc : 2, :], c, alpha=0.5)


class _Multigrid:
    """Symmetric V(1,1)-cycle (SPD), so it can precondition conjugate gradients.

    Fine level: damped Jacobi (omega 0.8; the fine operator is diagonally dominant). Coarse
    levels: l1-Jacobi (D + sum |offdiagonal|, always convergent) scaled by 1/0.8, because Galerkin
    operators of bilinear interpolation are not diagonally dominant.
    """

    OMEGA = 0.8
    COARSEST = 8
    COARSE_SWEEPS = 4

    def __init__(self, fine: _Fine) -> None:
        self.ops: list = [fine]
        dm = fine.dm
        self.smooth = [torch.where(dm > 0, self.OMEGA / torch.where(dm > 0, dm, 1.0), 0.0)]
        c = fine.coefficients()
        while min(c.shape[-2:]) > self.COARSEST:
            c = _coarsen(c)
            diag = c[:, _CENTRE : _CENTRE + 1]
            l1 = c.abs().sum(1, keepdim=True)
            self.ops.append(_Stencil(c))
            self.smooth.append(torch.where(diag > 0, 1.0 / torch.where(diag > 0, l1, 1.0), 0.0))
        self.active = [s > 0 for s in self.smooth]

    def __call__(self, r: torch.Tensor, level: int = 0) -> torch.Tensor:
        op, sm = self.ops[level], self.smooth[level]
        e = sm * r
        if level == len(self.ops) - 1:
            for _ in range(self.COARSE_SWEEPS - 1):
                e = e + sm * (r - op(e))
            return e
        h, w = r.shape[-2:]
        hc, wc = self.smooth[level + 1].shape[-2:]
        rc = _restrict(r - op(e), hc, wc)
        ec = self(rc, level + 1)
        e = e + _prolong(ec, h, w) * self.active[level]
        return e + sm * (r - op(e))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((-2, -1), keepdim=True)


def _pcg(op, prec, b: torch.Tensor, max_iter: int, *, rtol: float | None = None,
         tol: float | None = None) -> torch.Tensor:
    """Preconditioned CG for every (N, C) system at once, from u = 0.

    A system stops when its residual 2-norm is below ``rtol`` * |b| (``rtol`` given) or when its
    last update's max-norm is below ``tol`` * ``_UPDATE_SAFETY`` (the error estimate; see
    :func:`linear_imputation`).
    """
    u = torch.zeros_like(b)
    r = b.clone()
    z = prec(r)
    p = z.clone()
    rz = _dot(r, z)
    bn = b.flatten(-2).norm(dim=-1)[..., None, None]
    stop = rtol * bn if rtol is not None else None
    active = bn > (stop if stop is not None else 0.0)
    for _ in range(max_iter):
        ap = op(p)
        pap = _dot(p, ap)
        # a converged system stops moving, so its result does not depend on the rest of the batch
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0)
        step = alpha * p
        u.add_(step)
        r.sub_(alpha * ap)
        if stop is not None:
            active = active & (r.flatten(-2).norm(dim=-1)[..., None, None] > stop)
        else:
            active = active & (step.flatten(-2).abs().amax(-1)[..., None, None] > tol * _UPDATE_SAFETY)
        if not bool(active.any()):
            break
        z = prec(r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        rz = rz_new
        p = z + beta * p
    return u


def _solve_exact(x: torch.Tensor, removed: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor:
    """float64 CG (float32 multigrid preconditioner) to relative residual ``rtol``."""
    h, w = x.shape[-2:]
    x64 = x.to(torch.float64)
    m64 = removed[:, None].to(torch.float64)
    d64 = _neigh(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device))
    fine64 = _Fine(m64, d64)
    b = _neigh(x64 * (1 - m64)).mul_(m64)
    mg = _Multigrid(_Fine(m64.float(), d64.float()))
    u = _pcg(fine64, lambda r: mg(r.float()).double(), b, max_iter, rtol=rtol)
    return torch.where(m64 > 0, u, x64)


def _solve_fast(x: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """float32 CG to the max-norm update rule ``tol`` (x's units)."""
    h, w = x.shape[-2:]
    x32 = x.to(torch.float32)
    m = removed[:, None].to(torch.float32)
    fine = _Fine(m, _neigh(torch.ones(1, 1, h, w, device=x.device)))
    b = _neigh(x32 * (1 - m)).mul_(m)
    u = _pcg(fine, _Multigrid(fine), b, max_iter, tol=tol)
    return torch.where(m > 0, u, x32)


def _solver_mode(x: torch.Tensor, tol: float | str | None, rtol: float | None) -> tuple[str, float]:
    if rtol is not None:
        if tol not in (None, "exact"):
            raise InputError(f"give tol or rtol, not both (tol={tol!r}, rtol={rtol!r})")
        return "exact", float(rtol)
    if tol == "exact" or (tol is None and x.dtype == torch.float64):
        return "exact", EXACT_RTOL
    tol = PIXEL_TOL if tol is None else tol
    if isinstance(tol, str) or not tol > 0:
        raise InputError(f"tol must be a positive number, 'exact' or None, got {tol!r}")
    return "fast", float(tol)


def linear_imputation(x: torch.Tensor, removed: torch.Tensor, *, tol: float | str | None = None,
                      rtol: float | None = None, max_iter: int = 200, max_pixels: int = 2**22) -> torch.Tensor:
    """Fill the ``removed`` pixels of ``x`` by linear (8-neighbour) interpolation, no noise.

    x: (B, C, H, W) float; removed: (B, H, W) bool. Returns a new (B, C, H, W) tensor in
    ``x.dtype`` (kept pixels bit-identical). Accuracy:

    - ``tol`` (a number, in x's units): float32 CG, each system stopped once its last update's
      max-norm is below ``tol`` / 4 (the update bounds the remaining error: measured error/update
      <= 1 on ROAD masks, tests/test_imputation_tolerance.py; not a proof). Default for float32/16
      x: ``PIXEL_TOL`` = 0.5/255, half an 8-bit grey level for images in [0, 1], so the result
      quantises to the same 8-bit image as the exact solve (measured max error ~2e-5).
    - ``tol="exact"`` or ``rtol`` given (default for float64 x): float64 CG to relative residual
      ``rtol`` (``EXACT_RTOL`` = 1e-8), equal to scipy's ``spsolve`` to ~1e-8.

    ``max_pixels`` bounds B*C*H*W per solve chunk (halved on GPU out-of-memory,
    ``medxai.explain.engine.for_chunks``); on CPU chunks are also capped at ``_CACHE_PIXELS``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"x must be a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if removed.shape != (x.shape[0], *x.shape[-2:]) or removed.dtype != torch.bool:
        raise InputError(f"removed must be a bool (B, H, W) = {(x.shape[0], *x.shape[-2:])} mask, "
                         f"got {removed.dtype} {tuple(removed.shape)}")
    mode, level = _solver_mode(x, tol, rtol)
    solve = _solve_exact if mode == "exact" else _solve_fast
    per = x[0].numel()
    cap = max_pixels if x.device.type != "cpu" else min(max_pixels, _CACHE_PIXELS)
    chunk = max(1, cap // per)
    out = torch.empty_like(x)

    def run(s0: int, s1: int) -> None:
        sl = slice(s0, s1)
        if not bool(removed[sl].any()):
            out[sl] = x[sl]
        else:
            out[sl] = solve(x[sl], removed[sl], level, max_iter).to(x.dtype)

    for_chunks(x.shape[0], chunk, run, what="images to impute")
    return out


def noisy_linear_imputation(x: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None, **solver) -> torch.Tensor:
    """ROAD's noisy linear imputation: :func:`linear_imputation` + ``noise`` * N(0, 1) on removed pixels.

    Not clamped to [0, 1] (as in the ROAD reference code); the result goes to the model only.
    """
    out = linear_imputation(x, removed, **solver)
    if noise:
        eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = out + noise * eps * removed[:, None].to(out.dtype)
    return out
