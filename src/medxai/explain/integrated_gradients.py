"""Integrated Gradients (Sundararajan et al. 2017) with memory-bounded chunking and an adaptive mode.

``IG_i = (x_i - x'_i) * sum_k w_k * d f_c / d x_i (x' + a_k (x - x'))``; quadrature
Gauss-Legendre by default (``a_k = (1 + t_k) / 2``, ``w_k = W_k / 2``, n = 50), or Riemann
left / right / middle (weights 1/n). Definitions: ``definitions.md`` section 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from medxai._util.validate import check_images
from medxai.errors import InputError
from medxai.explain.base import TargetSpec, select_output
from medxai.explain.engine import for_chunks
from medxai.explain.gradient import (
    DEFAULT_MEMORY_BUDGET,
    GradientAttribution,
    _ChunkSizer,
    input_gradients,
)
from medxai.explain.precision import check_precision, precision_context
from medxai.explain.registry import REGISTRY

__all__ = ["IntegratedGradients"]

QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle")

#: a baseline: "zero" | "uniform" | "blur" | a number | a tensor | attack(x, y) -> x_adv | a list of them
Baseline = str | float | torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | Sequence


def quadrature(n: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Path points ``alphas`` in [0, 1] and weights ``w`` (float64, length n)."""
    if n < 1:
        raise InputError(f"n_steps must be >= 1, got {n}")
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return (1 + t) / 2, w / 2
    w = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return np.linspace(0, 1 - 1 / n, n), w
    if method == "riemann_right":
        return np.linspace(1 / n, 1, n), w
    if method == "riemann_middle":
        return np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), w
    raise InputError(f"method must be one of {QUADRATURES}, got {method!r}")


def _reflect_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy.ndimage's 'reflect' padding (d c b a | a b c d | d c b a), any r."""
    i = torch.arange(-r, n + r, device=device).remainder(2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) over H and W (of volumes (B, C, D, H, W) over D, H
    and W), as ``scipy.ndimage.gaussian_filter`` (mode 'reflect', radius ``int(truncate * sigma +
    0.5)``) on each image's spatial axes, in torch on x's device."""
    if sigma <= 0:
        return x.clone()
    r = int(truncate * sigma + 0.5)
    k = torch.arange(-r, r + 1, device=x.device, dtype=torch.float64)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).view(1, 1, -1)
    out = x
    for dim in range(x.ndim - 1, 1, -1):
        n = out.shape[dim]
        moved = out.movedim(dim, -1)
        padded = moved.index_select(-1, _reflect_index(n, r, x.device))
        flat = padded.reshape(-1, 1, padded.shape[-1])
        out = torch.nn.functional.conv1d(flat, k).reshape(moved.shape).movedim(-1, dim)
    return out


@REGISTRY.register("integrated_gradients", "ig")
class IntegratedGradients(GradientAttribution):
    """Integrated Gradients: ``IntegratedGradients(model, n_steps=50).attribute(x, target, baseline=...)``.

    Baselines (``attribute(..., baseline=)``), as (S, B, C, H, W) with the IG of several averaged
    ("expected gradients" style): ``"zero"`` (black, default); ``"uniform"`` (``n_baselines``
    draws of U(0, 1) from a generator seeded with ``seed``); ``"blur"`` (Gaussian blur of x,
    ``blur_sigma`` px = 10; ``blur_scaled=True`` scales sigma by max(H, W) / 224, the studies'
    resolution (volumes: max(D, H, W) / 224)); a number (constant image); a tensor (C, H, W),
    (B|1, C, H, W) or (S, B, C, H, W) in [0, 1]; a callable ``attack(x, y) -> x_adv`` such as ``medxai.attacks.PGD`` (an
    adversarial baseline; y = each sample's first target); or a list of the above (averaged).

    Volumes (B, C, D, H, W) work alike (maps (B, [T,] C, D, H, W); the blur baseline is 3-D).
    Steps x samples go through the model in chunks bounded by ``memory_budget`` bytes of autograd
    state (measured once with a one-image probe) or ``internal_batch_size`` images; the result
    does not depend on the chunking. A chunk that runs out of GPU memory is halved and retried
    (``medxai.explain.engine.for_chunks``), and the smaller size is kept for later calls.
    ``adaptive=True`` starts each sample at ``start_steps`` and doubles n for the samples whose
    ``|delta| > tol * |f(x) - f(x')| + atol`` (every target) up to ``max_steps``;
    ``self.n_evaluations_`` (B,) holds the gradient evaluations spent per sample in the last
    call (all baselines, all rounds).

    ``attribute(x, target, baseline=, return_convergence_delta=False)`` -> (B, [T,] C, H, W), and
    with the delta also the completeness error ``sum_i IG_i - (f(x) - f(x'))``, (B, [T]).
    captum's ``riemann_trapezoid`` is deliberately not offered: its weights sum to (n - 1) / n.

    ``precision="bf16"`` runs every forward / backward on the model cast to bf16 once per call
    (``medxai.explain.precision.low_precision``: weights restored bitwise after); the path points
    are built in fp32 and cast at the model's input, the input gradients come back in fp32 and the
    quadrature sum, ``(x - x') *`` and the baseline mean are fp32; maps in x's dtype.
    """

    default_reduce = "sum"
    split_on_oom = False  # chunks its path points itself

    def __init__(self, model: nn.Module, *, output: str = "logit", n_steps: int = 50,
                 method: str = "gausslegendre", n_baselines: int = 1, seed: int = 0, blur_sigma: float = 10.0,
                 blur_scaled: bool = False, internal_batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, adaptive: bool = False, tol: float = 0.01,
                 atol: float = 1e-5, start_steps: int = 4, max_steps: int = 256, precision: str = "fp32") -> None:
        super().__init__(model, output=output)
        quadrature(n_steps, method)  # validates
        if n_baselines < 1:
            raise InputError(f"n_baselines must be >= 1, got {n_baselines}")
        if adaptive and not 1 <= start_steps <= max_steps:
            raise InputError(f"need 1 <= start_steps <= max_steps, got {start_steps}, {max_steps}")
        self.n_steps, self.method, self.n_baselines, self.seed = n_steps, method, n_baselines, seed
        self.blur_sigma, self.blur_scaled = blur_sigma, blur_scaled
        self.adaptive, self.tol, self.atol = adaptive, tol, atol
        self.start_steps, self.max_steps = start_steps, max_steps
        self._chunk = _ChunkSizer(internal_batch_size, memory_budget)
        self.n_evaluations_: torch.Tensor | None = None
        self.precision = check_precision(precision)

    # ------------------------------------------------------------------ baselines
    def baselines(self, x: torch.Tensor, y: torch.Tensor, baseline: Baseline = "zero") -> torch.Tensor:
        """The baselines for ``x`` (B, C, H, W) as (S, B, C, H, W); ``y`` (B,) feeds an attack."""
        b = x.shape[0]
        if isinstance(baseline, (list, tuple)):
            if not baseline:
                raise InputError("an empty list of baselines")
            return torch.cat([self.baselines(x, y, one) for one in baseline])
        if baseline is None or (isinstance(baseline, str) and baseline in ("zero", "black")):
            return torch.zeros_like(x)[None]
        if isinstance(baseline, str):
            if baseline in ("uniform", "noise"):
                gen = torch.Generator(device=x.device).manual_seed(self.seed)
                return torch.rand((self.n_baselines, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
            if baseline in ("blur", "blurred"):
                sigma = self.blur_sigma * (max(x.shape[2:]) / 224 if self.blur_scaled else 1.0)
                return gaussian_blur(x, sigma).clamp(0, 1)[None]
            raise InputError(f"unknown baseline {baseline!r}: zero, uniform, blur, a number, a tensor, "
                             "an attack callable or a list of them")
        if isinstance(baseline, (int, float)):
            if not 0 <= baseline <= 1:
                raise InputError(f"a constant baseline must lie in [0, 1], got {baseline}")
            return torch.full_like(x, float(baseline))[None]
        if isinstance(baseline, torch.Tensor):
            t = baseline.to(device=x.device, dtype=x.dtype)
            if t.ndim == x.ndim - 1:
                t = t[None]
            if t.ndim == x.ndim:
                t = t[None]
            if t.ndim != x.ndim + 1 or t.shape[1] not in (1, b) or t.shape[2:] != x.shape[1:]:
                raise InputError(f"baseline shape {tuple(baseline.shape)} does not fit x {tuple(x.shape)}")
            check_images(t.flatten(0, 1), "baseline", ndim=(4, 5))
            return t.expand(t.shape[0], b, *x.shape[1:])
        if callable(baseline):
            adv = baseline(x.detach(), y)
            check_images(adv, "adversarial baseline", ndim=(4, 5))
            if adv.shape != x.shape:
                raise InputError(f"the attack returned shape {tuple(adv.shape)}, expected {tuple(x.shape)}")
            return adv.detach().to(x.dtype)[None]
        raise InputError(f"unsupported baseline of type {type(baseline).__name__}")

    # ------------------------------------------------------------------ core
    def path_gradients(self, x: torch.Tensor, base: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        """``sum_k w_k grad f(x' + a_k (x - x'))`` for (N, C, H, W) pairs: (N, T, C, H, W).

        (sample, step) pairs run sample-major in chunks; accumulation in pair order, so the
        result does not depend on the chunk size.
        """
        alphas, weights = quadrature(n, self.method)
        a = torch.as_tensor(alphas, device=x.device, dtype=x.dtype)
        w = torch.as_tensor(weights, device=x.device, dtype=x.dtype)
        n_img, n_t = x.shape[0], targets.shape[1]
        diff = x - base
        acc = torch.zeros((n_img, n_t, *x.shape[1:]), device=x.device, dtype=x.dtype)
        chunk = self._chunk(self.model, x)
        total = n_img * n
        ones = [1] * (x.ndim - 1)

        def run(p0: int, p1: int) -> None:
            p = torch.arange(p0, p1, device=x.device)
            bi, ki = p // n, p % n
            xs = base[bi] + a[ki].view(-1, *ones) * diff[bi]
            g, _, _ = input_gradients(self.model, xs, targets[bi], self.output)
            acc.index_add_(0, bi, g * w[ki].view(-1, 1, *ones))

        used = for_chunks(total, chunk, run, what="path points")
        if used < chunk:
            self._chunk.settle(x, used)
        return acc

    def _ig(self, x: torch.Tensor, bl: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        """Mean over the S baselines ``bl`` (S, B, ...) of IG with n steps: (B, T, C, H, W)."""
        s, b = bl.shape[0], x.shape[0]
        xe = x.repeat(s, *([1] * (x.ndim - 1)))
        be = bl.reshape(s * b, *x.shape[1:])
        g = self.path_gradients(xe, be, targets.repeat(s, 1), n)
        attr = (xe - be)[:, None] * g
        return attr.reshape(s, b, *attr.shape[1:]).mean(0)

    def _scores(self, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return select_output(self.model(imgs), self.output).gather(1, targets)

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw):
        with precision_context(self.model, self.precision):  # the weights cast once per call
            return super()._explain(x, spec, **kw)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, **kw):
        with precision_context(self.model, self.precision):
            return super()._attribute(x, targets, **kw)

    def _compute(self, x: torch.Tensor, spec: TargetSpec, baseline: Baseline = "zero",
                 return_convergence_delta: bool = False):
        b = x.shape[0]
        need_gap = return_convergence_delta or self.adaptive
        gap = None
        if spec.needs_logits or need_gap:
            with torch.no_grad():
                logits = self.model(x)
            targets = spec.resolve(logits, b)
            fx = select_output(logits, self.output).gather(1, targets)
        else:  # given targets: no forward at x (range checked by the first path chunk)
            targets = spec.without_logits(x, self.model)
        bl = self.baselines(x, targets[:, 0], baseline)
        s = bl.shape[0]
        if need_gap:
            fxb = torch.stack([self._scores(bl[i], targets) for i in range(s)]).mean(0)
            gap = fx - fxb  # (B, T)
        if not self.adaptive:
            attr = self._ig(x, bl, targets, self.n_steps)
            self.n_evaluations_ = torch.full((b,), self.n_steps * s, dtype=torch.long)
        else:
            attr = torch.empty((b, targets.shape[1], *x.shape[1:]), device=x.device, dtype=x.dtype)
            n_eval = torch.zeros(b, dtype=torch.long)
            active = torch.arange(b, device=x.device)
            n = self.start_steps
            while True:
                a = self._ig(x[active], bl[:, active], targets[active], n)
                attr[active] = a
                n_eval[active.cpu()] += n * s
                err = (a.flatten(2).sum(-1) - gap[active]).abs()
                ok = (err <= self.tol * gap[active].abs() + self.atol).all(1)
                active = active[~ok]
                if active.numel() == 0 or 2 * n > self.max_steps:
                    break
                n *= 2
            self.n_evaluations_ = n_eval
        if not return_convergence_delta:
            return attr
        assert gap is not None
        delta = attr.flatten(2).sum(-1) - gap
        return attr, delta

