"""SHAP-family attributions (Lundberg & Lee 2017): KernelSHAP over superpixels and GradientSHAP.

- ``KernelShap``: Shapley values of superpixels (or given features) by the Shapley kernel
  regression of Lundberg & Lee 2017, Theorem 2: weights ``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))``,
  weighted least squares with the efficiency constraint ``sum phi = f(x) - f(baseline)`` enforced
  exactly (the infinite weights of the empty and full coalitions, as a Lagrange constraint).
  All 2^M - 2 coalitions when that is at most ``n_samples`` (exact Shapley values), otherwise
  coalitions sampled from the kernel (sizes ``p(k) ~ (M - 1) / (k (M - k))``, then a uniform subset
  of that size; paired with their complements by default) and weighted equally.
- ``GradientShap``: expected gradients (Erion et al. 2021; captum's GradientShap, shap's
  GradientExplainer): ``mean_k (x + eps_k - x'_k) * grad f(x'_k + a_k (x + eps_k - x'_k))`` with
  baselines ``x'_k`` drawn from a baseline distribution, ``a_k ~ U(0, 1)``, ``eps_k ~ N(0, stdev^2)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from medxai._util.validate import check_images
from medxai.errors import InputError
from medxai.explain.base import Attribution, TargetSpec, check_target_range, preserve_model
from medxai.explain.engine import (
    DEFAULT_MEMORY_BUDGET,
    InputBuffer,
    blend_into,
    for_chunks,
    perturbed_outputs,
    sample_runs,
)
from medxai.explain.gradient import DEFAULT_MEMORY_BUDGET as GRAD_MEMORY_BUDGET
from medxai.explain.gradient import GradientAttribution, _ChunkSizer, input_gradients
from medxai.explain.lime import relabel, superpixels
from medxai.explain.registry import REGISTRY

__all__ = ["GradientShap", "KernelShap", "ShapResult", "coalitions", "gradient_shap_from_draws",
           "shapley_kernel", "shapley_regression"]

log = logging.getLogger("medxai.explain")

#: most features for which all 2^M - 2 coalitions are ever enumerated
MAX_ENUMERATED_FEATURES = 20


def shapley_kernel(m: int, k: torch.Tensor) -> torch.Tensor:
    """Shapley kernel ``pi = (M - 1) / (C(M, k) k (M - k))`` for coalition sizes 0 < k < M (float64).

    Lundberg & Lee 2017, Theorem 2 (the weights are infinite at k = 0 and k = M).
    """
    k = k.double()
    log_binom = math.lgamma(m + 1) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
    return (m - 1) / (torch.exp(log_binom) * k * (m - k))


def coalitions(m: int, n_samples: int, generator: torch.Generator, paired: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The coalitions of one sample with ``m`` features: (z (N, m) bool, weights (N,) float64, exact).

    Exact: all 2^m - 2 non-trivial coalitions with Shapley kernel weights, when that is at most
    ``n_samples`` (and m <= 20). Otherwise ``n_samples`` draws on CPU from ``generator``: size k with
    ``p(k) ~ (m - 1) / (k (m - k))``, then a uniform k-subset (weights 1 / N); ``paired`` adds each
    draw's complement (same distribution: p(k) = p(m - k)), halving the independent draws.
    """
    if m < 2:
        return torch.zeros(0, m, dtype=torch.bool), torch.zeros(0, dtype=torch.float64), True
    if m <= MAX_ENUMERATED_FEATURES and 2**m - 2 <= n_samples:
        codes = torch.arange(1, 2**m - 1)
        z = (codes[:, None] >> torch.arange(m)) & 1 == 1
        w = shapley_kernel(m, z.sum(1))
        return z, w / w.sum(), True
    sizes = torch.arange(1, m, dtype=torch.float64)
    p = (m - 1) / (sizes * (m - sizes))
    n_draw = (n_samples + 1) // 2 if paired else n_samples
    k = torch.multinomial(p / p.sum(), n_draw, replacement=True, generator=generator) + 1
    ranks = torch.rand(n_draw, m, generator=generator, dtype=torch.float64).argsort(1).argsort(1)
    z = ranks < k[:, None]
    if paired:
        z = torch.cat([z, ~z])[:n_samples]
    return z, torch.full((z.shape[0],), 1.0 / z.shape[0], dtype=torch.float64), False


def shapley_regression(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                       n_features: torch.Tensor) -> torch.Tensor:
    """Kernel SHAP's constrained weighted least squares, batched (float64).

    ``min_phi sum_n w_n (y_n - f0 - z_n . phi)^2`` s.t. ``sum_j phi_j = f1 - f0``, solved from the KKT
    system ``[[Z'WZ, 1], [1', 0]] [phi; mu] = [Z'W (y - f0); f1 - f0]``.
    z (B, N, F) (columns >= F_b are padding, their phi is 0), y (B, N, T), w (B, N), f0 / f1 (B, T),
    n_features (B,) -> phi (B, T, F). A singular system (too few distinct sampled coalitions) is solved
    in the least-norm sense and logged.
    """
    z, y, w = z.double(), y.double(), w.double()
    b, _, f = z.shape
    valid = (torch.arange(f, device=z.device) < n_features.to(z.device)[:, None]).double()  # (B, F)
    zw = z * w[..., None]
    a = zw.transpose(1, 2) @ z + torch.diag_embed(1 - valid)
    kkt = torch.zeros(b, f + 1, f + 1, dtype=torch.float64, device=z.device)
    kkt[:, :f, :f], kkt[:, :f, f], kkt[:, f, :f] = a, valid, valid
    rhs = torch.cat([zw.transpose(1, 2) @ (y - f0.double()[:, None]), (f1 - f0).double()[:, None]], 1)
    sol, info = torch.linalg.solve_ex(kkt, rhs)
    bad = info != 0
    if bool(bad.any()):
        log.warning("kernel SHAP: singular regression for %d sample(s) (too few coalitions); least-norm solution",
                    int(bad.sum()))
        sol = torch.where(bad[:, None, None], torch.linalg.pinv(kkt) @ rhs, sol)
    return sol[:, :f].transpose(1, 2)


@dataclass
class ShapResult:
    """A Kernel SHAP fit: features (B, ...) long labels 0..F_b-1, n_features (B,), targets (B, T),
    values (B, T, F) Shapley values (zero beyond F_b), base_value f(baseline) and prediction f(x)
    (B, T), exact (B,) bool (all coalitions enumerated)."""

    features: torch.Tensor
    n_features: torch.Tensor
    targets: torch.Tensor
    values: torch.Tensor
    base_value: torch.Tensor
    prediction: torch.Tensor
    exact: torch.Tensor

    def pixel_map(self) -> torch.Tensor:
        """Each pixel's feature value: (B, T, *features.shape[1:]) (a (B, H, W) mask -> (B, T, 1, H, W))."""
        b, t, _ = self.values.shape
        spatial = self.features.shape[1:]
        idx = self.features.reshape(b, 1, -1).expand(b, t, -1)
        out = self.values.gather(2, idx).reshape(b, t, *spatial)
        return out[:, :, None] if len(spatial) == 2 else out


def _constant_or_images(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """A number in [0, 1] or a (C, H, W) / (B, C, H, W) tensor in [0, 1] -> (B, C, H, W) like x."""
    if isinstance(value, (int, float)):
        if not 0 <= value <= 1:
            raise InputError(f"a constant {name} must lie in [0, 1], got {value}")
        return torch.full_like(x, float(value))
    t = torch.as_tensor(value).to(device=x.device, dtype=x.dtype)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[0] not in (1, x.shape[0]) or t.shape[1:] != x.shape[1:]:
        raise InputError(f"{name} shape {tuple(t.shape)} does not fit x {tuple(x.shape)}")
    check_images(t, name)
    return t.expand_as(x)


@REGISTRY.register("kernel_shap", "kernelshap")
class KernelShap(Attribution):
    """Kernel SHAP (Lundberg & Lee 2017, Theorem 2) over superpixels; each pixel gets its feature's phi.

    Args:
        model: classifier returning logits (B, K).
        n_samples: coalitions per image besides the empty and full ones (512); all 2^M - 2 of them
            (exact Shapley values) when 2^M - 2 <= n_samples.
        baseline: the value of an absent feature, in pixel units: a number in [0, 1] (default 0:
            black) or a (C, H, W) / (B, C, H, W) image in [0, 1].
        segmentation / segmentation_params: "slic" (default, as ``Lime``) or "quickshift"
            (``medxai.explain.lime.superpixels``); ``attribute(feature_mask=)`` gives the features
            instead: (H, W) or (B, H, W) ints shared by the channels (maps (B, [T,] 1, H, W)) or
            (B, C, H, W) (maps (B, [T,] C, H, W)).
        paired: sample coalitions with their complements. seed: coalition seed (``seed=`` per call).
            Every image draws from its own generator seeded with ``seed``, so its map does not
            depend on the rest of the batch.
        output: "logit" (default), "softmax" or "sigmoid". batch_size / memory_budget: model calls.
    All (image, coalition) forwards of a batch go through ``perturbed_outputs`` in one pass; images
    with fewer coalitions than the batch's largest are padded with zero-weight coalitions.
    """

    needs_grad = False

    def __init__(self, model: nn.Module, *, n_samples: int = 512, baseline: float | torch.Tensor = 0.0,
                 segmentation: str = "slic", segmentation_params: dict | None = None, paired: bool = True,
                 seed: int = 0, output: str = "logit", batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool | None = None) -> None:
        super().__init__(model, output=output)
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.baseline, self.paired, self.seed = n_samples, baseline, paired, seed
        self.segmentation, self.segmentation_params = segmentation, dict(segmentation_params or {})
        self.batch_size, self.memory_budget, self.channels_last = batch_size, memory_budget, channels_last

    def _features(self, x: torch.Tensor, feature_mask) -> torch.Tensor:
        if feature_mask is None:
            return superpixels(x, self.segmentation, **self.segmentation_params)
        m = torch.as_tensor(feature_mask, device=x.device)
        if m.is_floating_point() or m.ndim not in (2, 3, 4):
            raise InputError(f"feature_mask must be an int tensor (H, W), (B, H, W) or (B, C, H, W), got "
                             f"{tuple(m.shape)} {m.dtype}")
        if m.ndim == 2:
            m = m.expand(x.shape[0], -1, -1)
        want = (x.shape[0], *x.shape[2:]) if m.ndim == 3 else tuple(x.shape)
        if tuple(m.shape) != want:
            raise InputError(f"feature_mask shape {tuple(m.shape)} does not fit x {tuple(x.shape)}")
        return relabel(m)

    def _design(self, n_features: torch.Tensor, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, 2 + N, F) bool (row 0 all on, row 1 all off), weights (B, N), exact (B,)."""
        per, cache = [], {}
        for m in n_features.tolist():
            if m not in cache:
                cache[m] = coalitions(m, self.n_samples, torch.Generator().manual_seed(seed), self.paired)
            per.append(cache[m])
        f, n = int(n_features.max()), max(p[0].shape[0] for p in per)
        z = torch.zeros(len(per), 2 + n, f, dtype=torch.bool)
        w = torch.zeros(len(per), n, dtype=torch.float64)
        for b, (zb, wb, _) in enumerate(per):
            m = zb.shape[1]
            z[b, 0, :m] = True
            z[b, 2:2 + zb.shape[0], :m] = zb
            w[b, :wb.shape[0]] = wb
        exact = torch.tensor([p[2] for p in per])
        return z.to(device), w.to(device), exact.to(device)

    def _fit(self, x: torch.Tensor, targets: torch.Tensor, feature_mask=None, seed: int | None = None) -> ShapResult:
        feats = self._features(x, feature_mask)
        b = x.shape[0]
        with torch.no_grad():  # given targets are range-checked before the perturbed forwards
            check_target_range(targets, self.model(x[:1]).shape[-1])
        base = _constant_or_images(self.baseline, x, "baseline")
        n_features = feats.reshape(b, -1).amax(1) + 1
        z, w, exact = self._design(n_features, self.seed if seed is None else int(seed), x.device)
        on = z.to(x.dtype)
        flat = feats.reshape(b, -1)
        shape = (-1, *([1] * (4 - feats.ndim)), *feats.shape[1:])  # (n, 1|C, H, W)
        buffer = InputBuffer(x, self.channels_last, self.model)

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            out = buffer(len(si))
            for s, sl in sample_runs(si):
                keep = on[s, pi[sl]].index_select(1, flat[s]).reshape(shape)
                blend_into(out[sl], keep, x[s], base[s])
            return out

        y = perturbed_outputs(self.model, x, z.shape[1], make, targets, output=self.output,
                              batch_size=self.batch_size, memory_budget=self.memory_budget)  # (B, 2 + N, T)
        f1, f0 = y[:, 0], y[:, 1]
        phi = shapley_regression(z[:, 2:], y[:, 2:], w, f0, f1, n_features)
        return ShapResult(features=feats, n_features=n_features, targets=targets, values=phi.to(x.dtype),
                          base_value=f0, prediction=f1, exact=exact)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, *, feature_mask=None,
                   seed: int | None = None) -> torch.Tensor:
        return self._fit(x, targets, feature_mask, seed).pixel_map()

    def shap_values(self, x: torch.Tensor, target: int | torch.Tensor | list | None = None, *,
                    top_k: int | None = None, feature_mask=None, seed: int | None = None) -> ShapResult:
        """The full fit (always with a target axis T): per-feature values, f(baseline), f(x)."""
        check_images(x)
        with preserve_model(self.model):
            return self._fit(x, self.targets(x, target, top_k), feature_mask, seed)


# --------------------------------------------------------------------------- GradientSHAP

def gradient_shap_from_draws(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, pool: torch.Tensor,
                             idx: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor | None = None, *,
                             output: str = "logit", chunk: int = 64) -> torch.Tensor:
    """GradientSHAP's deterministic core for given draws: (B, T, C, H, W).

    ``attr_b = 1/n sum_k (x_b + eps_kb - x'_kb) * grad f(x'_kb + a_kb (x_b + eps_kb - x'_kb))`` with
    ``x'_kb = pool[idx[k, b], b]``. x (B, C, H, W); targets (B, T); pool (S, B|1, C, H, W) baselines;
    idx (n, B|1) long; alpha (n, B|1); noise (n, B|1, C, H, W) or None. A size-1 axis is shared by all
    samples. (sample, draw) pairs run sample-major in chunks of ``chunk`` images (halved on GPU OOM).
    """
    b, n = x.shape[0], idx.shape[0]
    acc = torch.zeros((b, targets.shape[1], *x.shape[1:]), device=x.device, dtype=x.dtype)
    ones = [1] * (x.ndim - 1)

    def col(t: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
        return bi if t.shape[1] > 1 else torch.zeros_like(bi)

    def run(p0: int, p1: int) -> None:
        p = torch.arange(p0, p1, device=x.device)
        bi, ki = p // n, p % n
        base = pool[idx[ki, col(idx, bi)], col(pool, bi)].to(x.dtype)
        xn = x[bi] if noise is None else x[bi] + noise[ki, col(noise, bi)].to(x.dtype)
        diff = xn - base
        pts = base + alpha[ki, col(alpha, bi)].to(x.dtype).view(-1, *ones) * diff
        g, _, _ = input_gradients(model, pts, targets[bi], output)
        acc.index_add_(0, bi, diff[:, None] * g)

    for_chunks(b * n, chunk, run, what="GradientSHAP points")
    return acc / n


@REGISTRY.register("gradient_shap", "gradientshap", "expected_gradients")
class GradientShap(GradientAttribution):
    """GradientSHAP / expected gradients: ``GradientShap(model, n_samples=25, stdev=0.0).attribute(x, target,
    baseline=...)`` -> (B, [T,] C, H, W).

    Draw k of n: a baseline ``x'_k`` uniformly from the baseline distribution, ``a_k ~ U(0, 1)`` and
    noise ``eps_k ~ N(0, stdev^2)`` (``stdev`` in pixel units, default 0; the noisy input is not
    clamped); attribution = mean over k of ``(x + eps_k - x'_k) * grad f(x'_k + a_k (x + eps_k - x'_k))``
    (captum's GradientShap and shap's GradientExplainer; both use the noisy input in the multiplier).
    For a linear model ``sum attr = f(x) - mean_k f(x'_k)`` exactly (stdev 0).
    ``baseline``: a number in [0, 1] (default 0: black), an image (C, H, W), a distribution (S, C, H, W)
    shared by the batch, or per-sample distributions (S, B, C, H, W), all in [0, 1].
    Draws come from a CPU generator seeded with ``seed`` and are the same for every image of the
    batch (a map does not depend on the rest of the batch); ``attribute(generator=)`` uses the given
    generator instead. Points run in chunks bounded by ``memory_budget`` bytes of autograd state.
    """
    image_ndims = (4,)  # volumes: not checked yet

    default_reduce = "sum"
    split_on_oom = False  # chunks its points itself

    def __init__(self, model: nn.Module, *, output: str = "logit", n_samples: int = 25, stdev: float = 0.0,
                 seed: int = 0, internal_batch_size: int | None = None,
                 memory_budget: int = GRAD_MEMORY_BUDGET) -> None:
        super().__init__(model, output=output)
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if not stdev >= 0:
            raise InputError(f"stdev must be >= 0, got {stdev}")
        self.n_samples, self.stdev, self.seed = n_samples, float(stdev), seed
        self._chunk = _ChunkSizer(internal_batch_size, memory_budget)

    def baseline_pool(self, x: torch.Tensor, baseline) -> torch.Tensor:
        """The baseline distribution as (S, B|1, C, H, W)."""
        if isinstance(baseline, (int, float)):
            return _constant_or_images(baseline, x[:1], "baseline")[None]
        t = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype)
        if t.ndim == 3:
            t = t[None]
        if t.ndim == 4:
            t = t[:, None]
        if t.ndim != 5 or t.shape[1] not in (1, x.shape[0]) or t.shape[2:] != x.shape[1:]:
            raise InputError(f"baseline shape {tuple(baseline.shape)} does not fit x {tuple(x.shape)}")
        check_images(t.flatten(0, 1), "baseline")
        return t

    def draws(self, x: torch.Tensor, n_baselines: int, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Shared draws (idx (n, 1), alpha (n, 1), noise (n, 1, C, H, W) or None), on x's device."""
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        n = self.n_samples
        idx = torch.randint(0, n_baselines, (n, 1), generator=g, device=g.device)
        alpha = torch.rand((n, 1), generator=g, device=g.device, dtype=torch.float64)
        noise = None
        if self.stdev > 0:
            noise = torch.randn((n, 1, *x.shape[1:]), generator=g, device=g.device, dtype=torch.float64) * self.stdev
            noise = noise.to(x.device, x.dtype)
        return idx.to(x.device), alpha.to(x.device, x.dtype), noise

    def _compute(self, x: torch.Tensor, spec: TargetSpec, baseline=0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        targets = spec.without_logits(x, self.model)
        pool = self.baseline_pool(x, baseline)
        idx, alpha, noise = self.draws(x, pool.shape[0], generator)
        chunk = self._chunk(self.model, x)
        return gradient_shap_from_draws(self.model, x, targets, pool, idx, alpha, noise, output=self.output,
                                        chunk=chunk)
