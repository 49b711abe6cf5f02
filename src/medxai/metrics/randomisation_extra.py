"""More randomisation metrics: random-logit test, smooth MPRT, efficient MPRT; Focus.

All reuse :mod:`medxai.metrics.randomisation`: its explainer calls, its Spearman and SSIM, its
layer randomisation (each layer re-initialised from ``derive_seed(seed, "randomise", name)``,
the model snapshotted and restored bitwise afterwards, also on error). Random draws (the other
class, the smoothing noise, the mosaic partners) come from generators seeded per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medxai._util.seed import derive_seed
from medxai._util.validate import as_targets, check_images
from medxai.errors import InputError
from medxai.explain.base import preserve_model
from medxai.metrics._common import check_maps, minmax
from medxai.metrics.faithfulness import Seed, _draw, _seeds
from medxai.metrics.randomisation import (
    Explainer,
    RandomisationResult,
    _explain,
    _reinit,
    model_randomisation,
    randomisable_layers,
    restore_on_exit,
    select_layers,
    ssim,
)
from medxai.metrics.registry import ScoreContext, metric

__all__ = [
    "EfficientMPRTResult",
    "build_mosaics",
    "discrete_entropy",
    "efficient_mprt",
    "focus",
    "mosaic_focus",
    "random_logit",
    "smooth_mprt",
]


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with preserve_model(model), torch.no_grad():
        return model(x)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _ssim_prep(maps: torch.Tensor, on: str) -> torch.Tensor:
    m = maps.to(torch.float64).reshape(maps.shape[0], -1, *maps.shape[-2:])
    return minmax(m.abs() if on == "abs" else m)


@metric("random_logit", category="randomisation", higher_is_better=False, needs=("model", "images", "explainer"),
        reference="Sixt et al. 2020, When explanations lie: why many modified BP attributions fail (ICML), "
                  "random logit test", score=lambda fn, ctx: {"random_logit": fn(
                      ctx.model, ctx.explainer, ctx.images, ctx.targets, **ctx.opts("random_logit"))})
def random_logit(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None = None,
                 *, seed: Seed = 0, other: torch.Tensor | None = None, maps: torch.Tensor | None = None,
                 ssim_on: str = "abs", explainer_kwargs: dict | None = None) -> torch.Tensor:
    """SSIM between the map for the target and the map for a random other class (Sixt et al.).

    The other class is uniform over the K - 1 classes != target, drawn per sample from a
    generator seeded by ``seed`` (or given as ``other`` (B,)). SSIM (:func:`ssim`, 7 x 7
    window, data range 1) of the per-map min-max normalised |a| (``ssim_on="abs"``) or a
    ("raw"). ``maps``: the target's maps if already computed (else explained here). A
    class-sensitive explainer scores low; one that ignores the class scores 1.
    Quantus 0.6.0 ``RandomLogit`` computes SSIM on the *flattened* maps (a 1-D signal, spatial
    structure lost) with a joint data range; that is not followed. Returns float64 (B,).
    """
    check_images(x)
    if ssim_on not in ("abs", "raw"):
        raise InputError(f"ssim_on must be 'abs' or 'raw', got {ssim_on!r}")
    b = x.shape[0]
    logits = _predict(model, x)
    k = logits.shape[-1]
    if k < 2:
        raise InputError("the random-logit test needs a model with at least 2 classes")
    t = as_targets(target, b, x.device, default=logits.argmax(-1), num_classes=k)
    if other is None:
        r = torch.stack([torch.randint(0, k - 1, (), generator=_gen(s)) for s in _seeds(seed, b)]).to(x.device)
        other = r + (r >= t).long()
    other = as_targets(other, b, x.device, num_classes=k)
    if bool((other == t).any()):
        raise InputError("other must differ from the target class for every sample")
    kw = dict(explainer_kwargs or {})
    with restore_on_exit(model):
        a_t = _explain(explainer, model, x, t, kw) if maps is None else check_maps(maps).detach()
        a_o = _explain(explainer, model, x, other, kw)
    return ssim(_ssim_prep(a_t, ssim_on), _ssim_prep(a_o, ssim_on), data_range=1.0)


def _smoothed(explainer: Explainer, nr_samples: int, noise_magnitude: float, seeds: list[int], clip: bool):
    """An explainer averaging ``explainer`` over nr_samples copies x + std * eps (the last one
    noiseless, as Quantus), std = noise_magnitude * (max - min) of each image; the noise of copy
    n of sample i is drawn from derive_seed(seeds[i], "smooth", n), the same at every layer."""

    def explain(model: nn.Module, x: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
        dims = tuple(range(1, x.ndim))
        std = noise_magnitude * (x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True))
        total = None
        for n in range(nr_samples):
            if n == nr_samples - 1:
                xn = x
            else:
                eps = _draw("normal", tuple(x.shape[1:]), [derive_seed(s, "smooth", n) for s in seeds],
                            x.dtype, x.device)
                xn = x + std * eps
                xn = xn.clamp(0.0, 1.0) if clip else xn
            a = _explain(explainer, model, xn, target, kw).to(torch.float64)
            total = a if total is None else total + a
        return total / nr_samples

    return explain


def _mean_score(name: str):
    def score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        res = fn(ctx.model, ctx.explainer, ctx.images, ctx.targets, **ctx.opts(name))
        return {name: torch.nanmean(res.spearman_abs, 0)}

    return score


@metric("smooth_mprt", category="randomisation", higher_is_better=False, needs=("model", "images", "explainer"),
        reference="Hedström et al. 2023, Sanity checks revisited: an exploration to repair the model parameter "
                  "randomisation test (XAI in Action, NeurIPS workshop), sMPRT", score=_mean_score("smooth_mprt"))
def smooth_mprt(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None = None,
                *, nr_samples: int = 50, noise_magnitude: float = 0.1, order: str = "bottom_up", seed: int = 0,
                noise_seed: Seed = 0, clip: bool = True, layers: Sequence[str] | None = None,
                explainer_kwargs: dict | None = None, granularity: str = "layer") -> RandomisationResult:
    """sMPRT: :func:`model_randomisation` with every map (original and randomised) averaged over
    ``nr_samples`` noisy copies of the input (std ``noise_magnitude`` x the image's range; the
    last copy is x itself; Quantus ``SmoothMPRT`` defaults 50 and 0.1).

    order: "bottom_up" (cascading from the input layer, the paper's and Quantus' default),
    "top_down" (from the output, Adebayo) or "independent". ``clip`` keeps the noisy copies in
    [0, 1] (medxai's explainers refuse anything else); Quantus does not clip (``clip=False``
    with a callable explainer reproduces that). The noise is drawn per sample from ``noise_seed``
    and reused at every layer, so the comparison is not blurred by fresh noise. The registry
    column is the mean Spearman(|a|) over the randomised steps (the unrandomised model excluded;
    Quantus 0.6.0's average includes it, as its key "original" is not the skipped "orig").
    """
    check_images(x)
    if nr_samples < 1 or noise_magnitude < 0:
        raise InputError(f"need nr_samples >= 1 and noise_magnitude >= 0, got {nr_samples}, {noise_magnitude}")
    orders = {"bottom_up": "cascading", "top_down": "cascading", "independent": "independent"}
    if order not in orders:
        raise InputError(f"order must be one of {sorted(orders)}, got {order!r}")
    names = list(layers) if layers is not None else [n for n, _ in randomisable_layers(model)]
    if order == "bottom_up":
        names = names[::-1]  # model_randomisation cascades from the last name given
    smoothed = _smoothed(explainer, nr_samples, float(noise_magnitude), _seeds(noise_seed, x.shape[0]), clip)
    return model_randomisation(model, smoothed, x, target, order=orders[order], seed=seed, layers=names,
                               explainer_kwargs=explainer_kwargs, granularity=granularity)


def discrete_entropy(values: torch.Tensor, n_bins: int = 100) -> torch.Tensor:
    """Entropy (nats) of the histogram of each sample's values in ``n_bins`` equal bins between
    its min and max, = ``scipy.stats.entropy(np.histogram(a, bins=n_bins)[0])`` (numpy's bin
    rule, last bin closed). (B, ...) -> float64 (B,); a constant sample has entropy 0."""
    v = values.detach().to(torch.float64).reshape(values.shape[0], -1)
    lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    const = hi == lo
    lo, hi = torch.where(const, lo - 0.5, lo), torch.where(const, hi + 0.5, hi)  # numpy's empty-range rule
    steps = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=v.device)
    edges = lo + (hi - lo) * steps  # (B, n_bins + 1), as np.linspace(lo, hi, n_bins + 1)
    idx = ((v - lo) * (n_bins / (hi - lo))).long().clamp(0, n_bins - 1)
    idx = idx - (v < edges.gather(1, idx)).long()  # numpy's correction of the float rounding
    nxt = (idx + 1).clamp(max=n_bins)
    idx = idx + ((v >= edges.gather(1, nxt)) & (idx != n_bins - 1)).long()
    counts = torch.zeros(v.shape[0], n_bins, dtype=torch.float64, device=v.device)
    counts.scatter_add_(1, idx.clamp(0, n_bins - 1), torch.ones_like(v))
    p = counts / counts.sum(1, keepdim=True)
    return -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)).sum(1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    q = p.to(torch.float64) / p.to(torch.float64).sum(-1, keepdim=True)
    return -(torch.where(q > 0, q * q.clamp_min(1e-300).log(), 0.0)).sum(-1)


@dataclass
class EfficientMPRTResult:
    """eMPRT per sample, all float64 (B,).

    score: (H(a_rand) - H(a)) / H(a), the relative rise in explanation complexity (discrete
    entropy of the map) from the original to the fully randomised model (NaN where H(a) = 0, a
    constant map); explanation_entropy / randomised_entropy: H(a), H(a_rand); model_rise:
    the same relative rise for the model's softmax output entropy; relative_to_model:
    (H(a_rand) / H(a)) / (H(y_rand) / H(y)) (Quantus' "delta skill" extra score).
    """

    score: torch.Tensor
    explanation_entropy: torch.Tensor
    randomised_entropy: torch.Tensor
    model_rise: torch.Tensor
    relative_to_model: torch.Tensor


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), float("nan"))


@metric("efficient_mprt", category="randomisation", higher_is_better=True, needs=("model", "images", "explainer"),
        reference="Hedström et al. 2023, Sanity checks revisited: an exploration to repair the model parameter "
                  "randomisation test (XAI in Action, NeurIPS workshop), eMPRT",
        score=lambda fn, ctx: {"efficient_mprt": fn(ctx.model, ctx.explainer, ctx.images, ctx.targets,
                                                    **ctx.opts("efficient_mprt")).score})
def efficient_mprt(model: nn.Module, explainer: Explainer, x: torch.Tensor, target: int | torch.Tensor | None = None,
                   *, n_bins: int = 100, seed: int = 0, layers: Sequence[str] | None = None,
                   explainer_kwargs: dict | None = None) -> EfficientMPRTResult:
    """eMPRT: randomise every layer (each from its own seed) and score the relative rise in the
    discrete entropy (``n_bins`` bins, :func:`discrete_entropy`) of the raw map, (H(a_rand) -
    H(a)) / H(a) (Hedström et al.'s eMPRT; Quantus ``EfficientMPRT`` with its defaults: 100 bins,
    no abs, no normalisation, only the fully randomised model). A method that depends on the
    model becomes noisier: higher is better. The model's own rise (softmax entropy) and the
    ratio of both come with it. The model is restored bitwise afterwards, also on error.
    """
    check_images(x)
    kw = dict(explainer_kwargs or {})
    known = select_layers(model, layers)
    with restore_on_exit(model):
        logits = _predict(model, x)
        t = as_targets(target, x.shape[0], x.device, default=logits.argmax(-1), num_classes=logits.shape[-1])
        h0 = discrete_entropy(_explain(explainer, model, x, t, kw), n_bins)
        m0 = _entropy(torch.softmax(logits.to(torch.float64), -1))
        for name, module in known:
            _reinit(name, module, seed)
        h1 = discrete_entropy(_explain(explainer, model, x, t, kw), n_bins)
        m1 = _entropy(torch.softmax(_predict(model, x).to(torch.float64), -1))
    return EfficientMPRTResult(_ratio(h1 - h0, h0), h0, h1, _ratio(m1 - m0, m0), _ratio(_ratio(h1, h0), _ratio(m1, m0)))


# ---------------------------------------------------------------- Focus


def build_mosaics(x: torch.Tensor, labels: torch.Tensor, *, n_target: int = 2, seed: Seed = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 x 2 mosaics (Arias-Duart et al. 2022): for sample i, image i plus ``n_target`` - 1 other
    images of its class and 4 - n_target images of other classes, drawn from the batch and placed
    in random quadrants, per sample from a generator seeded by ``seed``.

    Returns mosaics (B, C, 2H, 2W), quadrants (B, 4) bool (target-class quadrants, in the order
    top-left, top-right, bottom-left, bottom-right) and ok (B,) bool: False where the batch lacks
    the partners (that mosaic is all zeros; its Focus is NaN).
    """
    check_images(x)
    b, c, h, w = x.shape
    y = torch.as_tensor(labels, device=x.device).reshape(-1).long()
    if y.shape[0] != b:
        raise InputError(f"labels must be ({b},), got {tuple(y.shape)}")
    if not 1 <= n_target <= 3:
        raise InputError(f"n_target must be 1, 2 or 3 target-class images per mosaic, got {n_target}")
    mosaics = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    quads = torch.zeros(b, 4, dtype=torch.bool, device=x.device)
    ok = torch.zeros(b, dtype=torch.bool, device=x.device)
    yc = y.cpu()
    for i, s in enumerate(_seeds(seed, b)):
        g = _gen(s)
        same = [j for j in torch.nonzero(yc == yc[i]).flatten().tolist() if j != i]
        diff = torch.nonzero(yc != yc[i]).flatten().tolist()
        if len(same) < n_target - 1 or len(diff) < 4 - n_target:
            continue
        pick_s = [same[j] for j in torch.randperm(len(same), generator=g)[: n_target - 1].tolist()]
        pick_d = [diff[j] for j in torch.randperm(len(diff), generator=g)[: 4 - n_target].tolist()]
        members = [i, *pick_s, *pick_d]
        pos = torch.randperm(4, generator=g).tolist()
        for m, p in zip(members, pos, strict=True):
            r, col = divmod(p, 2)
            mosaics[i, :, r * h : (r + 1) * h, col * w : (col + 1) * w] = x[m]
        quads[i, [pos[k] for k in range(n_target)]] = True
        ok[i] = True
    return mosaics, quads, ok


def focus(maps: torch.Tensor, quadrants: torch.Tensor) -> torch.Tensor:
    """Focus: share of the positive relevance of a mosaic map (B, H, W) that lies in the
    target-class quadrants (B, 4) bool (top-left, top-right, bottom-left, bottom-right; split at
    H // 2, W // 2 as Quantus). float64 (B,); NaN where the map has no positive relevance
    (Quantus divides by sum + 1e-9 and returns 0)."""
    check_maps(maps)
    m = maps.to(torch.float64).reshape(maps.shape[0], -1, *maps.shape[-2:]).clamp_min(0).sum(1)
    q = torch.as_tensor(quadrants, device=maps.device).bool()
    if q.shape != (m.shape[0], 4):
        raise InputError(f"quadrants must be (B, 4) booleans, got {tuple(q.shape)}")
    h, w = m.shape[-2:]
    hh, hw = h // 2, w // 2
    parts = torch.stack([m[:, :hh, :hw].sum((1, 2)), m[:, :hh, hw:].sum((1, 2)),
                         m[:, hh:, :hw].sum((1, 2)), m[:, hh:, hw:].sum((1, 2))], 1)
    total = parts.sum(1)
    return _ratio((parts * q).sum(1), total)


# category "faithfulness", not Quantus' "localisation": medxai's localisation metrics all take
# (maps, mask) and carry a NaN reason (tests/test_metrics_localisation.py, test_metrics_statistics.py)
@metric("focus", category="faithfulness", higher_is_better=True, needs=("model", "images", "explainer"),
        reference="Arias-Duart et al. 2022, Focus! Rating XAI methods and finding biases (FUZZ-IEEE)",
        score=lambda fn, ctx: {"focus": fn(ctx.model, ctx.explainer, ctx.images, ctx.targets,
                                           **ctx.opts("focus"))})
def mosaic_focus(model: nn.Module, explainer: Explainer | Callable[..., torch.Tensor], x: torch.Tensor,
                 labels: torch.Tensor, *, n_target: int = 2, seed: Seed = 0,
                 explainer_kwargs: dict | None = None) -> torch.Tensor:
    """Focus per sample: build its mosaic from the batch (:func:`build_mosaics`, labels = the
    class of each image, also the class explained), explain the mosaic for that class and score
    :func:`focus`. The mosaics are 2H x 2W (the model must accept them, e.g. global pooling).
    A sample's mosaic uses other images of the batch (partners drawn per sample, seeded), so its
    value depends on them; NaN where the batch has no partners for it, or the map has no
    positive relevance. float64 (B,).
    """
    if labels is None:
        raise InputError("focus needs the class label of every image (targets)")
    mosaics, quads, ok = build_mosaics(x, labels, n_target=n_target, seed=seed)
    out = torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device)
    if not bool(ok.any()):
        return out
    idx = torch.nonzero(ok).flatten()
    y = torch.as_tensor(labels, device=x.device).reshape(-1).long()
    with restore_on_exit(model):
        maps = _explain(explainer, model, mosaics[idx], y[idx], dict(explainer_kwargs or {}))
    out[idx] = focus(maps, quads[idx])
    return out
