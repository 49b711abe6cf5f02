"""Faithfulness: does removing what the map calls important change the model's output?

Deletion / insertion (RISE), pixel flipping, region perturbation (AOPC) and ROAD, all through
the batched masked-forward engine (``medxai.explain.engine.perturbed_outputs``): every perturbed
image of every sample is built on the fly in chunks from a per-pixel step index and run in
large batches, in torch, on the images' device.

Maps: (B, H, W) or (B, 1, H, W), one map per image shared by all channels. Volumes: deletion,
insertion and pixel flipping also take x (B, C, D, H, W) with maps (B, 1, D, H, W) and remove
voxels (insertion's blur is RISE's kernel in 3-D); region perturbation and ROAD are 2-D only. Pixel order: by
descending map value, ties to the lowest flat index (stable); LeRF orders ascending, ties to
the lowest index. ``target`` None explains the class predicted on the clean image (lowest index
on ties). Every metric scores the softmax probability of the target by default (``output``:
"logit" | "softmax" | "sigmoid"; Quantus' defaults too). The model runs in eval mode with
frozen parameters and is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from medxai._util.validate import as_targets, check_images
from medxai.errors import InputError
from medxai.explain.base import preserve_model
from medxai.explain.engine import for_chunks, perturbed_outputs
from medxai.metrics._common import order_asc, order_desc, ranks_of, single_maps
from medxai.metrics.imputation import linear_imputation
from medxai.metrics.registry import ScoreContext, metric

__all__ = [
    "CurveResult",
    "RoadResult",
    "deletion",
    "insertion",
    "pixel_flipping",
    "region_perturbation",
    "rise_blur",
    "road",
]


@dataclass
class CurveResult:
    """A perturbation curve per sample.

    curve: (B, n + 1) model output after 0..n steps; fraction: (n + 1,) share of the pixels (or
    patches) replaced after each step; auc: (B,) (sum s - s_0/2 - s_n/2) / n, the trapezoid
    area on [0, 1] (RISE); targets: (B,) the explained class.
    """

    curve: torch.Tensor
    fraction: torch.Tensor
    auc: torch.Tensor
    targets: torch.Tensor


@dataclass
class RoadResult:
    """ROAD per sample and percentage.

    percentages: (P,); probability: (B, P) output (``output``) of the target class on the
    imputed image; correct: (B, P) 1.0 where the argmax equals the target; auc: (B,) trapezoid
    mean of ``probability`` over the percentages; targets: (B,).
    """

    percentages: torch.Tensor
    probability: torch.Tensor
    correct: torch.Tensor
    auc: torch.Tensor
    targets: torch.Tensor


def _auc(curve: torch.Tensor) -> torch.Tensor:
    n = curve.shape[-1] - 1
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / n


@lru_cache(maxsize=8)
def _rise_kernel(klen: int, sigma: float, ndim: int = 2) -> torch.Tensor:
    """RISE's ``gkern``: scipy's gaussian_filter (reflect mode) of a centred delta, klen x klen
    (``ndim=3``: klen^3)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen,) * ndim)
    delta[(klen // 2,) * ndim] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma))


def rise_blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The insertion substrate of RISE: each channel convolved with ``gkern(11, 5)``, zero padding.

    x (B, C, H, W) -> (B, C, H, W), same dtype and device; volumes (B, C, D, H, W) with the 3-D
    kernel (the same construction on a klen^3 delta).
    """
    c, nd = x.shape[1], x.ndim - 2
    k = _rise_kernel(klen, float(sigma), nd).to(device=x.device, dtype=x.dtype)
    conv = F.conv2d if nd == 2 else F.conv3d
    return conv(x, k.expand(c, 1, *k.shape), padding=klen // 2, groups=c)


def _prepare(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target, volumes: bool = False) -> torch.Tensor:
    """Validate and return the maps flattened to (B, HW) (volumes, if allowed: (B, DHW))."""
    check_images(x, ndim=(4, 5) if volumes else 4)
    if x.ndim == 5 and maps.ndim != 5:
        raise InputError(f"the maps of volumes {tuple(x.shape)} must be (B, 1, D, H, W), got {tuple(maps.shape)}")
    a = single_maps(maps)
    if a.shape[0] != x.shape[0] or a.shape[1:] != x.shape[2:]:
        raise InputError(f"maps {tuple(maps.shape)} do not match images {tuple(x.shape)}")
    return a.reshape(a.shape[0], -1)


Seed = int | Sequence[int] | torch.Tensor


def _seeds(seed: Seed, b: int) -> list[int]:
    """One seed per sample: an int is used for every sample (so a sample's random draws never
    depend on the rest of the batch); a (B,) sequence gives each sample its own."""
    if isinstance(seed, int):
        return [seed] * b
    seeds = [int(v) for v in torch.as_tensor(seed).reshape(-1).tolist()]
    if len(seeds) != b:
        raise InputError(f"seed must be an int or one per sample ({b}), got {len(seeds)}")
    return seeds


def _draw(kind: str, shape: tuple[int, ...], seeds: list[int], dtype: torch.dtype, device) -> torch.Tensor:
    """(B, *shape) draws, sample i from its own generator seeded with seeds[i] (on the CPU)."""
    out = []
    for sd in seeds:
        gen = torch.Generator(device="cpu").manual_seed(sd)
        fn = torch.randn if kind == "normal" else torch.rand
        out.append(fn(shape, generator=gen, dtype=dtype))
    return torch.stack(out).to(device)


def _resolve_target(model, x, target, batch_size) -> torch.Tensor:
    if target is not None:
        return as_targets(target, x.shape[0], x.device)
    logits = perturbed_outputs(model, x, 1, lambda si, pi: x[si], batch_size=batch_size)[:, 0]
    return logits.argmax(-1)


def _curve(model, x, start, finish, step_of_pixel, n_steps, targets, output, batch_size) -> torch.Tensor:
    """Outputs (B, n_steps + 1) of the target class; at step p the pixels with step_of_pixel < p
    show ``finish``, the others ``start``. start/finish: (B, C, H, W) or broadcastable scalars."""
    b = x.shape[0]
    sop = step_of_pixel.reshape(b, 1, *x.shape[2:])
    start = torch.as_tensor(start, dtype=x.dtype, device=x.device).expand_as(x)
    finish = torch.as_tensor(finish, dtype=x.dtype, device=x.device).expand_as(x)
    ones = [1] * (x.ndim - 1)

    def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        sel = sop[si] < pi.view(-1, *ones)
        return torch.where(sel, finish[si], start[si])

    return perturbed_outputs(model, x, n_steps + 1, make, targets, output=output, batch_size=batch_size)


def _pixel_steps(flat_maps: torch.Tensor, steps: int | None, step_size: int | None) -> tuple[torch.Tensor, int]:
    n = flat_maps.shape[-1]
    if step_size is None:
        if steps is None or steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        step_size = math.ceil(n / steps)
    if step_size < 1:
        raise InputError(f"step_size must be >= 1 pixel, got {step_size}")
    ranks = ranks_of(order_desc(flat_maps))
    return ranks // step_size, math.ceil(n / step_size)


def _causal(model, x, maps, target, start, finish, steps, step_size, output, batch_size) -> CurveResult:
    flat = _prepare(model, x, maps, target, volumes=True)
    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        sop, n = _pixel_steps(flat, steps, step_size)
        curve = _curve(model, x, start(x) if callable(start) else start, finish(x) if callable(finish) else finish,
                       sop, n, t, output, batch_size)
    hw = flat.shape[-1]
    step = math.ceil(hw / n) if step_size is None else step_size
    frac = (torch.arange(n + 1, device=x.device, dtype=x.dtype) * step).clamp(max=hw) / hw
    return CurveResult(curve, frac, _auc(curve), t)


def _curve_score(column: str):
    def score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        return {column: fn(ctx.model, ctx.images, ctx.maps, ctx.targets, **ctx.opts(column)).auc}

    return score


@metric("deletion", category="faithfulness", higher_is_better=False, needs=("model", "images"),
        reference="Petsiuk et al. 2018, RISE (BMVC), causal metric 'deletion'", score=_curve_score("deletion"))
def deletion(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None, *,
             steps: int = 224, step_size: int | None = None, substrate: float = 0.0, output: str = "softmax",
             batch_size: int | None = None) -> CurveResult:
    """RISE deletion: replace pixels by ``substrate`` in descending map order, ``step_size`` pixels
    per step (default ceil(HW / steps): 224 px per step at 224 x 224), scoring the softmax
    probability of the target after each step. Lower AUC is better.
    """
    return _causal(model, x, maps, target, lambda z: z, substrate, steps, step_size, output, batch_size)


@metric("insertion", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Petsiuk et al. 2018, RISE (BMVC), causal metric 'insertion'", score=_curve_score("insertion"))
def insertion(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None, *,
              steps: int = 224, step_size: int | None = None, klen: int = 11, sigma: float = 5.0,
              output: str = "softmax", batch_size: int | None = None) -> CurveResult:
    """RISE insertion: start from the blurred image (:func:`rise_blur`, kernel 11, sigma 5) and put
    the original pixels back in descending map order. Higher AUC is better.
    """
    return _causal(model, x, maps, target, lambda z: rise_blur(z, klen, sigma), lambda z: z, steps, step_size,
                   output, batch_size)


@metric("pixel_flipping", category="faithfulness", higher_is_better=False, needs=("model", "images"),
        reference="Bach et al. 2015, On pixel-wise explanations ... by layer-wise relevance propagation (PLoS ONE)",
        score=_curve_score("pixel_flipping"))
def pixel_flipping(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None,
                   *, steps: int | None = 100, features_in_step: int | None = None, baseline: float = 0.0,
                   output: str = "softmax", batch_size: int | None = None) -> CurveResult:
    """Flip pixels (all channels) to ``baseline`` in descending map order, ``features_in_step``
    pixels per step (default ceil(HW / steps)); the curve is the target's ``output`` after each
    step, starting with the clean image. Quantus' PixelFlipping curve is ``curve[:, 1:]``.
    """
    return _causal(model, x, maps, target, lambda z: z, baseline, steps, features_in_step, output, batch_size)


def _aopc_score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return {"region_perturbation": fn(ctx.model, ctx.images, ctx.maps, ctx.targets,
                                      **ctx.opts("region_perturbation")).auc}


@metric("region_perturbation", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Samek et al. 2017, Evaluating the visualization of what a DNN has learned (IEEE TNNLS), AOPC",
        score=_aopc_score)
def region_perturbation(model: nn.Module, x: torch.Tensor, maps: torch.Tensor,
                        target: int | torch.Tensor | None = None, *, patch_size: int = 8, regions: int = 100,
                        order: str = "morf", baseline: float | str = 0.0, output: str = "softmax",
                        seed: Seed = 0, batch_size: int | None = None) -> CurveResult:
    """Region perturbation: non-overlapping ``patch_size`` patches (a grid centred on the image
    when the size is not a multiple: border patches are cut, floor(extra / 2) before) ranked by
    summed attribution ("morf" descending, "lerf"
    ascending, "random"), replaced cumulatively by ``baseline`` (a value, or "uniform" noise
    U(0, 1) as in Samek et al.) for k = 1..L = min(regions, #patches). Random draws come from a
    generator per sample seeded by ``seed`` (an int for all samples, or one per sample).

    Returns curve[:, k] = f(x) - f(x^k) (k = 0..L, so curve[:, 0] = 0; Quantus'
    RegionPerturbation returns curve[:, 1:]) and auc = AOPC = mean over k = 0..L (Samek eq. 12).
    """
    flat = _prepare(model, x, maps, target)
    b, _, h, w = x.shape
    if patch_size < 1:
        raise InputError(f"patch_size must be >= 1, got {patch_size}")
    ph, pw = math.ceil(h / patch_size), math.ceil(w / patch_size)
    oy, ox = (ph * patch_size - h) // 2, (pw * patch_size - w) // 2  # grid centred, as Quantus pads
    rows = (torch.arange(h, device=x.device) + oy) // patch_size
    cols = (torch.arange(w, device=x.device) + ox) // patch_size
    patch_of = (rows[:, None] * pw + cols[None, :]).reshape(-1)  # (HW,)
    sums = torch.zeros(b, ph * pw, device=x.device, dtype=torch.float64)
    sums.index_add_(1, patch_of, flat.to(torch.float64))
    if order == "morf":
        porder = order_desc(sums)
    elif order == "lerf":
        porder = order_asc(sums)
    elif order == "random":
        porder = order_asc(_draw("uniform", (ph * pw,), _seeds(seed, b), torch.float64, x.device))
    else:
        raise InputError(f"order must be 'morf', 'lerf' or 'random', got {order!r}")
    n = min(regions, ph * pw)
    if n < 1:
        raise InputError(f"regions must be >= 1, got {regions}")
    prank = ranks_of(porder)  # (B, P)
    sop = prank.gather(1, patch_of.expand(b, -1))  # patch rank of every pixel
    if baseline == "uniform":
        fin = _draw("uniform", tuple(x.shape[1:]), _seeds(seed, b), x.dtype, x.device)
    elif isinstance(baseline, str):
        raise InputError(f"baseline must be a number or 'uniform', got {baseline!r}")
    else:
        fin = float(baseline)
    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        out = _curve(model, x, x, fin, sop, n, t, output, batch_size)
    curve = out[:, :1] - out
    frac = torch.arange(n + 1, device=x.device, dtype=x.dtype) / (ph * pw)
    return CurveResult(curve, frac, curve.mean(-1), t)


IMPUTATIONS = ("noisy_linear", "mean", "blur")


def _road_inputs(x: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor, imputation: str, noise: float,
                 seeds: list[int], max_pixels: int) -> torch.Tensor:
    """Imputed images (b, P, C, H, W): pixels with rank < counts[p] removed and filled."""
    b, c, h, w = x.shape
    n_p = counts.numel()
    rm = (ranks[:, None, :] < counts[None, :, None]).reshape(b * n_p, h, w)
    xs = x[:, None].expand(b, n_p, c, h, w).reshape(b * n_p, c, h, w)
    if imputation == "noisy_linear":
        filled = linear_imputation(xs, rm, max_pixels=max_pixels)
    else:
        sub = x.mean((-2, -1), keepdim=True).expand_as(x) if imputation == "mean" else rise_blur(x)
        sub = sub[:, None].expand(b, n_p, c, h, w).reshape(b * n_p, c, h, w)
        filled = torch.where(rm[:, None], sub, xs)
    if noise:
        eps = _draw("normal", (n_p, c, h, w), seeds, filled.dtype, filled.device).reshape(filled.shape)
        filled = filled + noise * eps * rm[:, None].to(filled.dtype)
    return filled.reshape(b, n_p, c, h, w)


def _road_score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    opts = ctx.opts("road")
    res = fn(ctx.model, ctx.images, ctx.maps, ctx.targets, **opts)
    col = {"morf": "road_morf", "lerf": "road_lerf"}[opts.get("order", "morf")]
    return {col: res.auc}


@metric("road", category="faithfulness", higher_is_better=False, needs=("model", "images"),
        reference="Rong et al. 2022, A consistent and efficient evaluation strategy for attribution methods (ICML)",
        columns=("road_morf",), score=_road_score)
def road(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None, *,
         percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), order: str = "morf",
         imputation: str = "noisy_linear", noise: float = 0.01, seed: Seed = 0, output: str = "softmax",
         batch_size: int | None = None, max_pixels: int = 2**22) -> RoadResult:
    """ROAD: remove the top (MoRF) or bottom (LeRF) p% of pixels, floor(HW p / 100) of them, by
    the map, impute them, and score the model on the result, for every p.

    Imputation: "noisy_linear" (:mod:`medxai.metrics.imputation`, solved in torch), "mean" (the
    image's per-channel mean) or "blur" (:func:`rise_blur`); then ``noise`` * N(0, 1) on the
    removed pixels, drawn per sample from a generator seeded by ``seed`` (an int for every
    sample, or one per sample), so a sample's score never depends on the rest of the batch.
    Any channel count (Quantus 0.6.0 crashes on 3 channels). Not clamped, as in ROAD.
    MoRF: lower is better; LeRF: higher is better (the registry's ``road`` is MoRF).
    """
    flat = _prepare(model, x, maps, target)
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    if imputation not in IMPUTATIONS:
        raise InputError(f"imputation must be one of {IMPUTATIONS}, got {imputation!r}")
    pct = torch.as_tensor([float(p) for p in percentages], dtype=torch.float64)
    if pct.numel() == 0 or bool(((pct < 0) | (pct > 100)).any()):
        raise InputError(f"percentages must lie in [0, 100], got {list(percentages)}")
    b, c, h, w = x.shape
    hw = h * w
    counts = torch.tensor([int(hw * float(p) / 100) for p in pct], device=x.device)  # floor, as ROAD/Quantus
    ranks = ranks_of(order_desc(flat) if order == "morf" else order_asc(flat))  # (B, HW)
    seeds = _seeds(seed, b)
    n_p = counts.numel()
    chunk = max(1, max_pixels // (n_p * c * hw))
    parts: list[torch.Tensor] = []

    def run(s0: int, s1: int) -> None:
        xb = x[s0:s1]
        filled = _road_inputs(xb, ranks[s0:s1], counts, imputation, noise, seeds[s0:s1], max_pixels)
        parts.append(perturbed_outputs(model, xb, n_p, lambda si, pi: filled[si, pi], output=output,
                                       batch_size=batch_size))

    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        for_chunks(b, chunk, run, what="images (ROAD)")  # halved on GPU out-of-memory
    outs = torch.cat(parts)
    prob = outs.gather(2, t[:, None, None].expand(-1, n_p, 1))[..., 0]
    correct = (outs.argmax(-1) == t[:, None]).to(x.dtype)
    pf = pct.to(device=x.device, dtype=x.dtype)
    if n_p > 1:
        span = pf[-1] - pf[0]
        auc = torch.trapezoid(prob, pf, dim=-1) / span if float(span) != 0 else prob.mean(-1)
    else:
        auc = prob[:, 0]
    return RoadResult(pf, prob, correct, auc, t)
