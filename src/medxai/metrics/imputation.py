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
products of piecewise-constant 2x2 aggregation (damped Jacobi smoothing, over-corrected coarse
correction). The inner solve runs in float32; float64 residuals refine it (iterative refinement)
until the relative residual is below ``rtol``, so the result equals a direct sparse solve
(scipy's ``spsolve``) to ~1e-8. Then ``noise`` * N(0, 1) is added to the imputed pixels.

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


def _weight(dy: int, dx: int) -> float:
    return 0.0 if (dy, dx) == (0, 0) else (W_DIRECT if dy == 0 or dx == 0 else W_DIAGONAL)


def _sep(u: torch.Tensor) -> torch.Tensor:
    """[1, 2, 1] x [1, 2, 1] correlation of (..., H, W) with zero padding."""
    up = F.pad(u, (1, 1, 1, 1))
    v = up[..., :, :-2] + up[..., :, 2:]
    v.add_(up[..., :, 1:-1], alpha=2.0)
    s = v[..., :-2, :] + v[..., 2:, :]
    s.add_(v[..., 1:-1, :], alpha=2.0)
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


def _coarsen(c: torch.Tensor) -> torch.Tensor:
    """Galerkin product P^T A P of a 9-point operator (N, 9, h, w) with bilinear P; again 9-point.

    P puts coarse value J on fine 2J with weight 1 and on 2J + e with weight prod(1 - |e|/2).
    A_c[K](I) = sum_{e, k} w(e) c_k(2I + e) w(f), f = e + k - 2K in {-1, 0, 1}^2.
    """
    n, _, h, w = c.shape
    hc, wc = _coarse_size(h), _coarse_size(w)
    cp = F.pad(c, (1, 2 * wc - w, 1, 2 * hc - h))  # fine index i lives at i + 1
    out = c.new_zeros(n, 9, hc, wc)
    for ey in (-1, 0, 1):
        for ex in (-1, 0, 1):
            we = _W1[ey] * _W1[ex]
            for k, (ky, kx) in enumerate(_OFFS):
                fld = cp[:, k, 1 + ey : 1 + ey + 2 * hc : 2, 1 + ex : 1 + ex + 2 * wc : 2]
                sy, sx = ey + ky, ex + kx
                for cy in (-1, 0, 1):
                    fy = sy - 2 * cy
                    if not -1 <= fy <= 1:
                        continue
                    for cx in (-1, 0, 1):
                        fx = sx - 2 * cx
                        if -1 <= fx <= 1:
                            out[:, _OFFS.index((cy, cx))].add_(fld, alpha=we * _W1[fy] * _W1[fx])
    return out


def _prolong1(c: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Linear interpolation along ``dim``: f[2j] = c[j], f[2j + 1] = (c[j] + c[j + 1]) / 2, cropped to n."""
    c = c.movedim(dim, -1)
    odd = (c[..., :-1] + c[..., 1:]).mul_(0.5)
    odd = F.pad(odd, (0, 1))
    f = torch.stack([c, odd], -1).flatten(-2)[..., :n]
    return f.movedim(-1, dim)


def _restrict1(f: torch.Tensor, nc: int, dim: int) -> torch.Tensor:
    """The transpose of :func:`_prolong1`: c[j] = f[2j] + (f[2j - 1] + f[2j + 1]) / 2."""
    f = f.movedim(dim, -1)
    fp = F.pad(f, (1, 2 * nc - f.shape[-1]))  # fine i at i + 1, length 2 nc + 1
    c = fp[..., 1 : 2 * nc : 2] + (fp[..., 0 : 2 * nc - 1 : 2] + fp[..., 2 : 2 * nc + 1 : 2]).mul_(0.5)
    return c.movedim(-1, dim)


class _Multigrid:
    """Symmetric V(1,1)-cycle (SPD), so it can precondition conjugate gradients.

    Fine level: damped Jacobi (omega 0.8; the fine operator is diagonally dominant). Coarse
    levels: l1-Jacobi (D + sum |offdiagonal|, always convergent) scaled by 1/0.8, because Galerkin
    operators of bilinear interpolation are not diagonally dominant.
    """

    OMEGA = 0.8
    COARSEST = 4
    COARSE_SWEEPS = 8

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
        rc = _restrict1(_restrict1(r - op(e), wc, -1), hc, -2)
        ec = self(rc, level + 1)
        e = e + _prolong1(_prolong1(ec, w, -1), h, -2) * self.active[level]
        return e + sm * (r - op(e))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((-2, -1), keepdim=True)


def _pcg(op, prec, b: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor:
    """Preconditioned CG for every (N, C) system at once, from u = 0."""
    u = torch.zeros_like(b)
    r = b.clone()
    z = prec(r)
    p = z.clone()
    rz = _dot(r, z)
    stop = rtol * b.flatten(-2).norm(dim=-1)[..., None, None]
    active = b.flatten(-2).norm(dim=-1)[..., None, None] > stop
    for _ in range(max_iter):
        ap = op(p)
        pap = _dot(p, ap)
        # a converged system stops moving, so its result does not depend on the rest of the batch
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0)
        u.add_(alpha * p)
        r.sub_(alpha * ap)
        active = active & (r.flatten(-2).norm(dim=-1)[..., None, None] > stop)
        if not bool(active.any()):
            break
        z = prec(r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        rz = rz_new
        p = z + beta * p
    return u


def _solve_chunk(x: torch.Tensor, removed: torch.Tensor, rtol: float, max_iter: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x64 = x.to(torch.float64)
    m64 = removed[:, None].to(torch.float64)
    d64 = _neigh(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device))
    fine64 = _Fine(m64, d64)
    b = _neigh(x64 * (1 - m64)).mul_(m64)
    mg = _Multigrid(_Fine(m64.float(), d64.float()))
    u = _pcg(fine64, lambda r: mg(r.float()).double(), b, rtol, max_iter)
    return torch.where(m64 > 0, u, x64)


def linear_imputation(x: torch.Tensor, removed: torch.Tensor, *, rtol: float = 1e-8,
                      max_iter: int = 200, max_pixels: int = 2**22) -> torch.Tensor:
    """Fill the ``removed`` pixels of ``x`` by linear (8-neighbour) interpolation, no noise.

    x: (B, C, H, W) float; removed: (B, H, W) bool. Returns a new (B, C, H, W) tensor in
    ``x.dtype`` (kept pixels bit-identical). ``max_pixels`` bounds B*C*H*W per solve chunk (halved
    on GPU out-of-memory, ``medxai.explain.engine.for_chunks``).
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise InputError(f"x must be a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if removed.shape != (x.shape[0], *x.shape[-2:]) or removed.dtype != torch.bool:
        raise InputError(f"removed must be a bool (B, H, W) = {(x.shape[0], *x.shape[-2:])} mask, "
                         f"got {removed.dtype} {tuple(removed.shape)}")
    per = x[0].numel()
    chunk = max(1, max_pixels // per)
    out = torch.empty_like(x)

    def run(s0: int, s1: int) -> None:
        sl = slice(s0, s1)
        if not bool(removed[sl].any()):
            out[sl] = x[sl]
        else:
            out[sl] = _solve_chunk(x[sl], removed[sl], rtol, max_iter).to(x.dtype)

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
