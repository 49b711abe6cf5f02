"""Explanation robustness: max- / average-sensitivity, local Lipschitz estimate, relative input /
output stability, infidelity.

Every metric is per sample: each image gets ``n_perturbations`` perturbed copies x', drawn from
generators seeded per (sample seed, perturbation index), so a sample's value never depends on the
rest of the batch, the batching or the chunking. The B x n perturbed inputs are built, explained
and reduced in memory-bounded chunks (``for_chunks``); only per-pair scalars are kept. The explained
target is held fixed at the clean target (None = the class predicted on the clean image). The
clean explanation e(x) is recomputed with the same explainer (the sensitivity metrics) or taken
from the audited maps (infidelity).

Perturbed inputs stay in [0, 1] by construction, never by clamping a draw:
- "ball" (sensitivity, RIS, ROS): each pixel uniform on [max(x - r, 0), min(x + r, 1)], the
  intersection of the L-inf ball of radius r (pixel units) with [0, 1]; inside the image's range
  this is captum's ``default_perturb_func``, at the borders the ball is cut, not piled up at 0 or 1.
- "normal" (local Lipschitz, infidelity): each pixel N(0, sigma^2) truncated to the values that keep
  x' in [0, 1] (inverse-CDF draws in float64); away from the borders (|x - 0|, |1 - x| >> sigma) it is the
  plain Gaussian of Quantus / Yeh et al.
A final min/max against the same bounds only guards float rounding of lo + u (hi - lo).
``perturbations=`` (B, n, C, H, W) replaces the draws by given displacements x' - x (infidelity: I;
``n_perturbations`` is then ignored); an x' outside [0, 1] is refused.

Anchors (tests/test_metrics_robustness.py, same perturbations injected on both sides, 1e-5):
captum 0.9.0 ``sensitivity_max`` and ``infidelity`` (``normalize=True`` = our ``normalise=True``),
Quantus 0.6.0 ``MaxSensitivity``, ``AvgSensitivity``, ``LocalLipschitzEstimate``,
``RelativeInputStability``, ``RelativeOutputStability``. Quantus 0.6.0 findings (not reproduced):
its RIS / ROS draw one-sided noise U(0.02, 0.2) (``upper_bound=0.2`` with ``batch_uniform_noise``'s
``lower_bound=0.02``), never kept in [0, 1]; their ``np.max`` turns a sample into NaN as soon as one
perturbation changes the prediction, where Agarwal et al. discard that perturbation; the
sensitivities divide by ||e(x)|| = 0 without a guard (inf / NaN), captum divides by 1 instead;
``LocalLipschitzEstimate`` normalises by one max over the whole batch by default
(``normalise=True``), so a sample's score depends on the others; ``Infidelity`` is a different
procedure (square patches replaced by a baseline), not Yeh et al.'s Gaussian eq. 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medxai._util.seed import derive_seed
from medxai._util.validate import as_targets, check_images
from medxai.errors import InputError
from medxai.explain.base import preserve_model, select_output
from medxai.explain.engine import for_chunks, model_batch_for, perturbed_outputs, tuned_chunks
from medxai.metrics._common import check_maps
from medxai.metrics.faithfulness import Seed, _seeds
from medxai.metrics.randomisation import _explain as call_explainer
from medxai.metrics.registry import ScoreContext, metric

__all__ = [
    "avg_sensitivity",
    "draw_displacements",
    "infidelity",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "relative_input_stability",
    "relative_output_stability",
]

Explainer = str | Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _bounds(x: torch.Tensor, d: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Range [lo, hi] of t such that x + t * d lies in [0, 1] (d None: d = 1); contains 0."""
    if d is None:
        return -x, 1 - x
    inf = torch.full_like(x, float("inf"))
    pos, neg = d > 0, d < 0
    safe = torch.where(d == 0, torch.ones_like(d), d)
    lo = torch.where(pos, -x / safe, torch.where(neg, (1 - x) / safe, -inf))
    hi = torch.where(pos, (1 - x) / safe, torch.where(neg, -x / safe, inf))
    return lo, hi


def draw_displacements(x: torch.Tensor, seeds: Sequence[int], index: torch.Tensor, *, kind: str, scale: float,
                       direction: torch.Tensor | None = None) -> torch.Tensor:
    """float64 displacements t (M, C, H, W) with x + t * direction in [0, 1], one generator per row.

    x: (M, C, H, W) clean rows; seeds: (M,) sample seeds; index: (M,) perturbation indices; row m is
    drawn on the CPU from ``derive_seed(seeds[m], "robustness", kind, index[m])`` in float64.
    kind "ball": uniform on [max(-r, lo), min(r, hi)] (r = scale); "normal": N(0, scale^2)
    truncated to [lo, hi] by the inverse CDF. direction None means 1 (t is x' - x).
    """
    if scale <= 0:
        raise InputError(f"the perturbation scale must be > 0, got {scale}")
    if kind not in ("ball", "normal"):
        raise InputError(f"kind must be 'ball' or 'normal', got {kind!r}")
    shape = tuple(x.shape[1:])
    gens = [torch.Generator().manual_seed(derive_seed(int(s), "robustness", kind, int(p)))
            for s, p in zip(seeds, index.tolist(), strict=True)]
    u = torch.stack([torch.rand(shape, dtype=torch.float64, generator=g) for g in gens]).to(x.device)
    x64 = x.to(torch.float64)
    lo, hi = _bounds(x64, None if direction is None else direction.to(torch.float64))
    if kind == "ball":
        lo, hi = lo.clamp(min=-scale), hi.clamp(max=scale)
        t = lo + u * (hi - lo)
    else:
        a, b = torch.special.ndtr(lo / scale), torch.special.ndtr(hi / scale)
        p = (a + u * (b - a)).clamp(torch.finfo(torch.float64).tiny, 1 - 2**-53)  # finite where a bound is inf
        t = scale * torch.special.ndtri(p)
    return torch.minimum(torch.maximum(t, lo), hi)


def _explain(explainer: Explainer, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             kwargs: dict) -> torch.Tensor:
    """``randomisation._explain`` (a method name or a callable) as checked (B, C, H, W) maps."""
    maps = call_explainer(explainer, model, x, target, kwargs)
    return check_maps(maps.reshape(maps.shape[0], -1, *maps.shape[-2:]), "explainer maps")


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with preserve_model(model):
        return model(x)


def _check_given(x: torch.Tensor, perturbations: torch.Tensor, n: int | None) -> int:
    b = x.shape[0]
    if perturbations.ndim != 5 or perturbations.shape[0] != b or tuple(perturbations.shape[2:]) != tuple(x.shape[1:]):
        raise InputError(f"perturbations must be (B, n, C, H, W) = ({b}, n, {', '.join(map(str, x.shape[1:]))}), "
                         f"got {tuple(perturbations.shape)}")
    if not bool(torch.isfinite(perturbations).all()):
        raise InputError("perturbations contain NaN/Inf")
    return perturbations.shape[1]  # n_perturbations is ignored when the perturbations are given


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each row's elements: (M, ...) -> (M,) float64."""
    return t.reshape(t.shape[0], -1).to(torch.float64).norm(dim=1)


#: pair(e, e', x, x', h, h') -> (M,) float64, for M (sample, perturbation) rows
PairFn = Callable[..., torch.Tensor]


def _pairs(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None, *,
           pair: PairFn, n: int | None, kind: str, scale: float, perturbations: torch.Tensor | None, seed: Seed,
           batch_size: int | None, explainer_kwargs: dict | None, keep_class: bool,
           logits: bool = False) -> torch.Tensor:
    """(B, n) float64 per-pair values; NaN where ``keep_class`` and x' changes the predicted class.
    ``pair`` gets the logits h(x), h(x') when ``logits`` or ``keep_class`` (else None).

    The clean explanation and the B x n perturbed ones are computed in chunks of ``batch_size``
    images (default ``model_batch_for(x)``); the target is the clean target for every x'.
    """
    check_images(x)
    kw = dict(explainer_kwargs or {})
    if perturbations is not None:
        n = _check_given(x, perturbations, n)
        perturbations = perturbations.to(device=x.device, dtype=torch.float64)
    if n is None or n < 1:
        raise InputError(f"n_perturbations must be >= 1, got {n}")
    b = x.shape[0]
    seeds = _seeds(seed, b)
    # the clean logits only where something reads them: the predicted class as target, a logit-based pair,
    # or the class check of perturbed images (sensitivity with given targets needs no forward of x)
    h = _logits(model, x) if target is None or logits or keep_class else None
    pred = None if h is None else h.argmax(-1)
    t = as_targets(target, x.shape[0], x.device, default=pred)
    chunk = batch_size or model_batch_for(x)
    e_parts: list[torch.Tensor] = []
    for_chunks(b, chunk, lambda a, z: e_parts.append(_explain(explainer, model, x[a:z], t[a:z], kw)),
               what="images explained")
    e = torch.cat(e_parts)
    out = torch.empty(b * n, dtype=torch.float64, device=x.device)

    def run(a: int, z: int) -> None:
        flat = torch.arange(a, z, device=x.device)
        si, pi = flat // n, flat % n
        xr = x[si]
        if perturbations is None:
            d = draw_displacements(xr, [seeds[i] for i in si.tolist()], pi, kind=kind, scale=scale)
        else:
            d = perturbations[si, pi]
        xp64 = xr.to(torch.float64) + d
        if perturbations is not None and bool(((xp64 < 0) | (xp64 > 1)).any()):
            raise InputError("x + perturbations leaves [0, 1]; perturbed inputs must stay images")
        xp = xp64.to(x.dtype)
        ep = _explain(explainer, model, xp, t[si], kw)
        hp = _logits(model, xp) if logits or keep_class else None
        vals = pair(e[si].to(torch.float64), ep.to(torch.float64), xr.to(torch.float64), xp.to(torch.float64),
                    None if h is None else h[si].to(torch.float64), None if hp is None else hp.to(torch.float64))
        if keep_class and hp is not None:
            vals = torch.where(hp.argmax(-1) == pred[si], vals, torch.full_like(vals, float("nan")))
        out[a:z] = vals

    if batch_size is None and x.device.type == "cpu":  # the chunk timed on the work itself (CPU)
        key = ("explain-pairs", explainer if isinstance(explainer, str) else id(explainer), tuple(x.shape[1:]), x.dtype)
        tuned_chunks(b * n, chunk, run, model=model, key=key, what="perturbed images explained")
    else:
        for_chunks(b * n, chunk, run, what="perturbed images explained")
    return out.reshape(b, n)


def _nanmax(v: torch.Tensor) -> torch.Tensor:
    """Max over the perturbations ignoring NaN (discarded ones); NaN if all were discarded."""
    kept = ~torch.isnan(v)
    m = torch.where(kept, v, torch.full_like(v, -float("inf"))).amax(1)
    return torch.where(kept.any(1), m, torch.full_like(m, float("nan")))


def _sensitivity(model: nn.Module, explainer: Explainer, x: torch.Tensor, target, reduce: str, **kw) -> torch.Tensor:
    normalise = kw.pop("normalise")

    def pair(e, ep, xr, xp, h, hp):
        diff = _norm(e - ep)
        if not normalise:
            return diff
        den = _norm(e)
        return torch.where(den > 0, diff / torch.where(den > 0, den, 1.0), float("nan"))

    v = _pairs(model, explainer, x, target, pair=pair, kind="ball", keep_class=False, **kw)
    return v.amax(1) if reduce == "max" else v.mean(1)


def _score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    name = fn.info.name  # type: ignore[attr-defined]
    return {name: fn(ctx.model, ctx.explainer, ctx.images, ctx.targets, **ctx.opts(name))}


_YEH = "Yeh et al. 2019, On the (in)fidelity and sensitivity of explanations (NeurIPS)"
_NEEDS = ("model", "images", "explainer")


@metric("max_sensitivity", category="robustness", higher_is_better=False, needs=_NEEDS,
        reference=_YEH + ", eq. 2 (max over the ball)", score=_score)
def max_sensitivity(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None = None,
                    *, n_perturbations: int | None = 10, radius: float = 0.02, normalise: bool = True,
                    perturbations: torch.Tensor | None = None, seed: Seed = 0, batch_size: int | None = None,
                    explainer_kwargs: dict | None = None) -> torch.Tensor:
    """Max over x' in the L-inf ball of radius ``radius`` of ||e(x) - e(x')||_F (/ ||e(x)||_F if
    ``normalise``), Yeh et al. 2019 eq. 2, Monte Carlo over ``n_perturbations`` draws. (B,) float64.

    x: (B, C, H, W) in [0, 1]; explainer: a ``medxai.explain`` method name or a callable
    (model, x, target) -> (B, [C,] H, W); target: None = the clean prediction, held fixed for x'.
    Defaults: r = 0.02 and 10 draws (captum ``sensitivity_max``; Quantus: r = 0.2, 200 draws);
    ``normalise=True`` (captum and Quantus both divide by ||e(x)||): an all-zero e(x) gives NaN
    (captum divides by 1, Quantus by 0). ``perturbations``: given displacements (B, n, C, H, W).
    """
    return _sensitivity(model, explainer, x, target, "max", n=n_perturbations, scale=radius, normalise=normalise,
                        perturbations=perturbations, seed=seed, batch_size=batch_size,
                        explainer_kwargs=explainer_kwargs)


@metric("avg_sensitivity", category="robustness", higher_is_better=False, needs=_NEEDS,
        reference=_YEH + ", eq. 2 with the mean over the ball (average sensitivity)", score=_score)
def avg_sensitivity(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None = None,
                    *, n_perturbations: int | None = 10, radius: float = 0.02, normalise: bool = True,
                    perturbations: torch.Tensor | None = None, seed: Seed = 0, batch_size: int | None = None,
                    explainer_kwargs: dict | None = None) -> torch.Tensor:
    """Mean over x' in the L-inf ball of ||e(x) - e(x')||_F (/ ||e(x)||_F): ``max_sensitivity``
    with the mean instead of the max (Quantus ``AvgSensitivity``). (B,) float64."""
    return _sensitivity(model, explainer, x, target, "mean", n=n_perturbations, scale=radius, normalise=normalise,
                        perturbations=perturbations, seed=seed, batch_size=batch_size,
                        explainer_kwargs=explainer_kwargs)


@metric("local_lipschitz_estimate", category="robustness", higher_is_better=False, needs=_NEEDS,
        reference="Alvarez-Melis & Jaakkola 2018, On the robustness of interpretability methods (WHI), eq. 4",
        score=_score)
def local_lipschitz_estimate(model: nn.Module, explainer: Explainer, x: torch.Tensor,
                             target: int | torch.Tensor | None = None, *, n_perturbations: int | None = 10,
                             sigma: float = 0.1, perturbations: torch.Tensor | None = None, seed: Seed = 0,
                             batch_size: int | None = None, explainer_kwargs: dict | None = None) -> torch.Tensor:
    """Max over x' of ||e(x) - e(x')||_2 / ||x - x'||_2 (Alvarez-Melis & Jaakkola 2018, eq. 4, the
    max over a neighbourhood estimated by sampling). x' = x + N(0, sigma^2) per pixel, truncated
    to [0, 1]; sigma = 0.1 as Quantus (which draws 200, untruncated). No 1e-10 in the denominator
    (Quantus adds one). (B,) float64."""
    def pair(e, ep, xr, xp, h, hp):
        return _norm(e - ep) / _norm(xr - xp)

    v = _pairs(model, explainer, x, target, pair=pair, n=n_perturbations, kind="normal", scale=sigma,
               perturbations=perturbations, seed=seed, batch_size=batch_size, explainer_kwargs=explainer_kwargs,
               keep_class=False)
    return v.amax(1)


def _rel(a: torch.Tensor, b: torch.Tensor, eps_min: float) -> torch.Tensor:
    """||(a - b) / a||_2 with every zero entry of a divided as eps_min (OpenXAI / Quantus)."""
    return _norm((a - b) / (a + (a == 0) * eps_min))


@metric("relative_input_stability", category="robustness", higher_is_better=False, needs=_NEEDS,
        reference="Agarwal et al. 2022, Rethinking stability for attribution-based explanations, eq. 2 (RIS)",
        score=_score)
def relative_input_stability(model: nn.Module, explainer: Explainer, x: torch.Tensor,
                             target: int | torch.Tensor | None = None, *, n_perturbations: int | None = 10,
                             radius: float = 0.02, eps_min: float = 1e-6, perturbations: torch.Tensor | None = None,
                             seed: Seed = 0, batch_size: int | None = None,
                             explainer_kwargs: dict | None = None) -> torch.Tensor:
    """RIS = max over x' with the clean predicted class of
    ||(e(x) - e(x')) / e(x)||_2 / max(||(x - x') / x||_2, eps_min) (Agarwal et al. 2022, eq. 2).

    Element-wise ratios; an entry with e(x) = 0 or x = 0 is divided by eps_min instead (the
    authors' OpenXAI code, as Quantus): a black pixel that moves makes the input change huge and
    RIS small. x' uniform in the L-inf ball of ``radius`` cut to [0, 1]. Perturbations that change
    the predicted class are discarded; none kept gives NaN. (B,) float64.
    """
    def pair(e, ep, xr, xp, h, hp):
        return _rel(e, ep, eps_min) / _rel(xr, xp, eps_min).clamp(min=eps_min)

    v = _pairs(model, explainer, x, target, pair=pair, n=n_perturbations, kind="ball", scale=radius,
               perturbations=perturbations, seed=seed, batch_size=batch_size, explainer_kwargs=explainer_kwargs,
               keep_class=True)
    return _nanmax(v)


@metric("relative_output_stability", category="robustness", higher_is_better=False, needs=_NEEDS,
        reference="Agarwal et al. 2022, Rethinking stability for attribution-based explanations, ROS (eq. 4)",
        score=_score)
def relative_output_stability(model: nn.Module, explainer: Explainer, x: torch.Tensor,
                              target: int | torch.Tensor | None = None, *, n_perturbations: int | None = 10,
                              radius: float = 0.02, eps_min: float = 1e-6, perturbations: torch.Tensor | None = None,
                              seed: Seed = 0, batch_size: int | None = None,
                              explainer_kwargs: dict | None = None) -> torch.Tensor:
    """ROS = max over x' with the clean predicted class of
    ||(e(x) - e(x')) / e(x)||_2 / max(||h(x) - h(x')||_2, eps_min), h = the logits (all classes).

    Same perturbations, eps_min rule and discarding as ``relative_input_stability``. (B,) float64.
    """
    def pair(e, ep, xr, xp, h, hp):
        return _rel(e, ep, eps_min) / _norm(h - hp).clamp(min=eps_min)

    v = _pairs(model, explainer, x, target, pair=pair, n=n_perturbations, kind="ball", scale=radius,
               perturbations=perturbations, seed=seed, batch_size=batch_size, explainer_kwargs=explainer_kwargs,
               keep_class=True)
    return _nanmax(v)


def _infidelity_score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return {"infidelity": fn(ctx.model, ctx.images, ctx.maps, ctx.targets, **ctx.opts("infidelity"))}


@metric("infidelity", category="robustness", higher_is_better=False, needs=("model", "images"),
        reference=_YEH + ", eq. 1 (Gaussian perturbations), optimal scaling beta as captum normalize=True",
        score=_infidelity_score)
def infidelity(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None, *,
               n_perturbations: int | None = 10, sigma: float = 0.1, normalise: bool = True,
               multiply_by_inputs: bool = False, baseline: float = 0.0, output: str = "logit",
               perturbations: torch.Tensor | None = None, seed: Seed = 0,
               batch_size: int | None = None) -> torch.Tensor:
    """INFD = E_I[(beta I . Phi - (f(x) - f(x - I')))^2] (Yeh et al. 2019, eq. 1), (B,) float64.

    maps Phi: (B, H, W) / (B, 1, H, W) (shared by the channels) or (B, C, H, W); f: the ``output``
    ("logit" default, "softmax", "sigmoid") of the target (None = the clean prediction).
    I ~ N(0, sigma^2) per pixel (sigma = 0.1), truncated so that x - I' stays in [0, 1], where
    I' = I (``multiply_by_inputs=False``: local maps such as gradients) or I' = I (x - baseline)
    (True: maps that include the input, e.g. gradient x input; captum's
    ``infidelity_perturb_func_decorator(True)`` convention). ``normalise=True`` (default) uses the
    least-squares scale beta = E[I.Phi (f(x) - f(x - I'))] / E[(I.Phi)^2] of the official code,
    equal to captum ``infidelity(normalize=True)``, so the score ignores the map's scale; False is
    eq. 1 as written (beta = 1, captum's default). Analytic: for a linear f, the gradient map has
    INFD = 0 (local perturbations) and gradient x input has INFD = 0 with ``multiply_by_inputs``
    and baseline 0. ``perturbations``: given I (B, n, C, H, W).
    """
    check_images(x)
    phi = check_maps(maps.reshape(maps.shape[0], -1, *maps.shape[-2:]), "maps").to(torch.float64)
    b = x.shape[0]
    if phi.shape[0] != b or phi.shape[1] not in (1, x.shape[1]) or tuple(phi.shape[-2:]) != tuple(x.shape[-2:]):
        raise InputError(f"maps of shape {tuple(maps.shape)} do not fit images {tuple(x.shape)}")
    if perturbations is not None:
        n_perturbations = _check_given(x, perturbations, n_perturbations)
        perturbations = perturbations.to(device=x.device, dtype=torch.float64)
    n = int(n_perturbations or 0)
    if n < 1:
        raise InputError(f"n_perturbations must be >= 1, got {n_perturbations}")
    seeds = _seeds(seed, b)
    x64 = x.to(torch.float64)
    direction = -(x64 - baseline) if multiply_by_inputs else -torch.ones_like(x64[:1])
    h = _logits(model, x)
    t = as_targets(target, x.shape[0], x.device, default=h.argmax(-1))
    f0 = select_output(h, output).gather(1, t[:, None])[:, 0].to(torch.float64)
    dots = torch.empty(b * n, dtype=torch.float64, device=x.device)

    def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        d = direction[si] if multiply_by_inputs else direction.expand(len(si), *x.shape[1:])
        if perturbations is None:
            i = draw_displacements(x[si], [seeds[k] for k in si.tolist()], pi, kind="normal", scale=sigma, direction=d)
        else:
            i = perturbations[si, pi]
        xp = x64[si] + i * d
        if perturbations is not None and bool(((xp < 0) | (xp > 1)).any()):
            raise InputError("x - perturbations leaves [0, 1]; perturbed inputs must stay images")
        dots[si * n + pi] = (i * phi[si]).flatten(1).sum(1)
        return xp.to(x.dtype)

    with preserve_model(model), torch.no_grad():
        fp = perturbed_outputs(model, x, n, make, t, output=output, batch_size=batch_size).to(torch.float64)
    diff = f0[:, None] - fp  # (B, n)
    dot = dots.reshape(b, n)
    if not normalise:
        return (dot - diff).square().mean(1)
    den = dot.square().sum(1)
    beta = (dot * diff).sum(1) / torch.where(den > 0, den, 1.0)
    infd = (beta[:, None] * dot - diff).square().mean(1)
    return torch.where(den > 0, infd, torch.full_like(infd, float("nan")))
