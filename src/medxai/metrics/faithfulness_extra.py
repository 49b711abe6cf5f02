"""More faithfulness metrics: faithfulness correlation, monotonicity correlation, IROF, selectivity, sufficiency.

All per sample and batched through the masked-forward engine (``perturbed_outputs``), with the
conventions of :mod:`medxai.metrics.faithfulness`: one map (B, H, W) per image shared by all
channels, so a "feature" is a pixel (all channels; Quantus 0.6.0 broadcasts the map to
(C, H, W) and draws channel elements, the same thing for one-channel images); pixel and patch
orders stable (ties to the lowest flat index); random draws from a generator per sample seeded
by ``seed`` (an int for every sample, or one per sample), so a sample's score never depends on
the rest of the batch; the model runs in eval mode, frozen, and is restored afterwards.
Defaults follow Quantus 0.6.0 (subset 224, 100 runs, "uniform" prior, SLIC, 8 px patches),
with its batch-global normalisation never reproduced (maps are used raw).
"""

from __future__ import annotations

import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.base import preserve_model
from medxai.explain.engine import perturbed_outputs
from medxai.metrics._common import check_maps, order_asc, ranks_of
from medxai.metrics.faithfulness import (
    CurveResult,
    Seed,
    _auc,
    _curve,
    _draw,
    _prepare,
    _resolve_target,
    _seeds,
    region_perturbation,
)
from medxai.metrics.randomisation import spearman
from medxai.metrics.registry import ScoreContext, metric

__all__ = [
    "faithfulness_correlation",
    "irof",
    "monotonicity_correlation",
    "pearson",
    "selectivity",
    "slic_segments",
    "sufficiency",
]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Pearson correlation of (B, n) and (B, n), float64 (B,); NaN where a row is constant."""
    x = a.to(torch.float64)
    y = b.to(torch.float64)
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    den = (x.square().sum(-1) * y.square().sum(-1)).sqrt()
    return torch.where(den > 0, (x * y).sum(-1) / torch.where(den > 0, den, 1.0), float("nan"))


def _score_fn(name: str, attr: str | None = None):
    def score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        res = fn(ctx.model, ctx.images, ctx.maps, ctx.targets, **ctx.opts(name))
        return {name: getattr(res, attr) if attr else res}

    return score


def _flat_indices(idx: torch.Tensor, b: int, hw: int, what: str) -> torch.Tensor:
    if idx.ndim != 3 or idx.shape[0] != b or idx.dtype not in (torch.int32, torch.int64):
        raise InputError(f"{what} must be integer pixel indices (B, R, K), got {tuple(idx.shape)} {idx.dtype}")
    if int(idx.min()) < 0 or int(idx.max()) >= hw:
        raise InputError(f"{what} must index the {hw} pixels of a map")
    return idx.long()


@metric("faithfulness_correlation", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Bhatt et al. 2020, Evaluating and aggregating feature-based model explanations (IJCAI), "
                  "faithfulness mu_F",
        score=_score_fn("faithfulness_correlation"))
def faithfulness_correlation(model: nn.Module, x: torch.Tensor, maps: torch.Tensor,
                             target: int | torch.Tensor | None = None, *, subset_size: int = 224, runs: int = 100,
                             baseline: float = 0.0, output: str = "logit", seed: Seed = 0,
                             subsets: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Pearson correlation, over ``runs`` random subsets S of ``subset_size`` pixels, between the
    summed attribution sum_{i in S} a_i and the output drop f(x) - f(x_{S <- baseline}) (Bhatt
    et al.'s faithfulness mu_F; Quantus ``FaithfulnessCorrelation`` defaults: logits, 100 runs of
    224; ``baseline`` a value, default 0 = Quantus' "black" (the image minimum) for images whose
    minimum is 0).

    Subsets are drawn without replacement per sample from a generator seeded by ``seed``, or
    given as ``subsets`` (B, runs, subset_size) flat pixel indices. Returns float64 (B,); NaN
    where the drops or the sums are constant over the runs (correlation undefined).
    """
    flat = _prepare(model, x, maps, target)
    b, _, h, w = x.shape
    hw = h * w
    if subsets is None:
        if not 1 <= subset_size <= hw or runs < 2:
            raise InputError(f"need 1 <= subset_size <= {hw} pixels and runs >= 2, got {subset_size}, {runs}")
        subsets = torch.stack([order_asc(_draw("uniform", (runs, hw), [s], torch.float32, "cpu")[0])[:, :subset_size]
                               for s in _seeds(seed, b)]).to(x.device)  # one sample's draws at a time
    subsets = _flat_indices(subsets, b, hw, "subsets")
    runs = subsets.shape[1]
    fill = torch.as_tensor(float(baseline), dtype=x.dtype, device=x.device)

    def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        sel = torch.zeros(si.shape[0], hw, dtype=torch.bool, device=x.device)
        sel.scatter_(1, subsets[si, pi], True)
        return torch.where(sel.view(-1, 1, h, w), fill, x[si])

    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        clean = perturbed_outputs(model, x, 1, lambda si, pi: x[si], t, output=output, batch_size=batch_size)
        pert = perturbed_outputs(model, x, runs, make, t, output=output, batch_size=batch_size)
    sums = flat.to(torch.float64).gather(1, subsets.reshape(b, -1)).reshape(b, runs, -1).sum(-1)
    return pearson(sums, clean.to(torch.float64) - pert.to(torch.float64))


@metric("monotonicity_correlation", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Nguyen & Martinez 2020, On quantitative aspects of model interpretability (arXiv 2007.07584), "
                  "monotonicity correlation", score=_score_fn("monotonicity_correlation"))
def monotonicity_correlation(model: nn.Module, x: torch.Tensor, maps: torch.Tensor,
                             target: int | torch.Tensor | None = None, *, features_in_step: int = 1,
                             nr_samples: int = 100, eps: float = 1e-5, output: str = "softmax", seed: Seed = 0,
                             values: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Spearman correlation between the attribution of each feature group and the (normalised)
    variance of the output when that group alone is replaced by draws from a uniform prior.

    Pixels are grouped ``features_in_step`` at a time in ascending map order (ties: lowest
    index). For group g, ``nr_samples`` copies of x get the group's pixels (all channels) set to
    one value v ~ U(0, 1) each; var_g = mean_k (f(x_gk) - f(x))^2 / f(x)^2 (the 1/f(x)^2 only
    where |f(x)| >= eps), a_g = summed attribution. Quantus ``MonotonicityCorrelation`` defaults
    (softmax, 100 samples, 1 feature per step; Nguyen & Martinez's monotonicity). ``values``
    (B, groups, nr_samples) injects the draws. Returns float64 (B,); NaN where a_g or var_g is
    constant (Spearman undefined).
    """
    flat = _prepare(model, x, maps, target)
    b, _, h, w = x.shape
    hw = h * w
    if features_in_step < 1 or hw % features_in_step:
        raise InputError(f"features_in_step must divide the {hw} pixels, got {features_in_step}")
    groups = hw // features_in_step
    group_of = ranks_of(order_asc(flat)) // features_in_step  # (B, HW)
    if values is None:
        if nr_samples < 1:
            raise InputError(f"nr_samples must be >= 1, got {nr_samples}")
        values = _draw("uniform", (groups, nr_samples), _seeds(seed, b), x.dtype, x.device)
    if values.shape[:2] != (b, groups) or values.ndim != 3:
        raise InputError(f"values must have shape ({b}, {groups}, nr_samples), got {tuple(values.shape)}")
    k = values.shape[2]
    vals = values.to(device=x.device, dtype=x.dtype)
    gmap = group_of.view(b, 1, h, w)

    def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        g, j = pi // k, pi % k
        sel = gmap[si] == g[:, None, None, None]
        return torch.where(sel, vals[si, g, j][:, None, None, None], x[si])

    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        y = perturbed_outputs(model, x, 1, lambda si, pi: x[si], t, output=output, batch_size=batch_size)[:, 0]
        pert = perturbed_outputs(model, x, groups * k, make, t, output=output, batch_size=batch_size)
    y = y.to(torch.float64)
    inv = torch.where(y.abs() >= eps, 1.0 / y.abs().clamp_min(eps), torch.ones_like(y)) ** 2
    var = (pert.to(torch.float64).view(b, groups, k) - y[:, None, None]).square().mean(-1) * inv[:, None]
    att = torch.zeros(b, groups, dtype=torch.float64, device=x.device).scatter_add_(1, group_of,
                                                                                     flat.to(torch.float64))
    return spearman(att, var)


def slic_segments(x: torch.Tensor, **slic_kwargs) -> torch.Tensor:
    """SLIC superpixels per image as Quantus' IROF makes them: ``skimage.segmentation.slic`` of
    the (H, W, C) float64 image with ``start_label=0`` and skimage's defaults (100 segments,
    compactness 10) unless overridden. (B, C, H, W) -> (B, H, W) long labels, on x's device.

    Runs skimage on the CPU, one image at a time (not in a hot loop: once per image).
    """
    from skimage.segmentation import slic

    kw = {"start_label": 0, **slic_kwargs}
    imgs = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    return torch.stack([torch.from_numpy(slic(im, **kw)).long() for im in imgs]).to(x.device)


@metric("irof", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Rieger & Hansen 2020, IROF: a low resource evaluation metric for explanation methods "
                  "(arXiv 2003.08747), area over the MoRF curve", score=_score_fn("irof", "auc"))
def irof(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None, *,
         segments: torch.Tensor | None = None, baseline: float | str = "mean", output: str = "softmax",
         batch_size: int | None = None, **slic_kwargs) -> CurveResult:
    """Iterative removal of features: superpixels (``segments`` (B, H, W) labels, default
    :func:`slic_segments`) ranked by mean attribution (descending, ties to the lowest label) are
    replaced cumulatively by ``baseline`` ("mean": the clean image's per-channel mean; or a
    value). curve[:, k] = f(x^k) / f(x) after k of the image's N superpixels (k = 0..N; images
    with fewer superpixels than the batch's largest N repeat their last value, and their
    ``fraction`` is k / N_i); auc = the area *over* the curve on [0, 1], 1 - trapezoid (Rieger &
    Hansen's AOC per image; their IROF is its mean over images). Higher is better. NaN where
    f(x) = 0 (the ratio is undefined; only with ``output="logit"``).

    Quantus 0.6.0's IROF differs, and is not followed: its "mean" fill is the mean of the whole
    (already perturbed) batch, recomputed at every step, so scores depend on the other images;
    its area is N - trapz(curve[1:]) (unnormalised, without the k = 0 point); it crashes on
    multi-channel images (mask shape assert). With a constant baseline its curve is ours.
    ``fraction`` here is (B, N + 1).
    """
    flat = _prepare(model, x, maps, target)
    b, _, h, w = x.shape
    seg = slic_segments(x, **slic_kwargs) if segments is None else segments.to(x.device).long()
    if seg.shape != (b, h, w):
        raise InputError(f"segments must be (B, H, W) = {(b, h, w)} labels, got {tuple(seg.shape)}")
    lab = torch.stack([torch.unique(s, return_inverse=True)[1] for s in seg.reshape(b, -1)])  # 0..N_i-1
    n_seg = lab.amax(1) + 1
    n = int(n_seg.max())
    count = torch.zeros(b, n, dtype=torch.float64, device=x.device).scatter_add_(
        1, lab, torch.ones_like(flat, dtype=torch.float64))
    total = torch.zeros_like(count).scatter_add_(1, lab, flat.to(torch.float64))
    mean = torch.where(count > 0, total / count.clamp_min(1), float("-inf"))  # padding segments last
    sop = ranks_of(torch.sort(-mean, dim=1, stable=True).indices).gather(1, lab)  # segment rank: gone from step rank+1
    if baseline == "mean":
        fin: torch.Tensor | float = x.mean((2, 3), keepdim=True).expand_as(x)
    elif isinstance(baseline, str):
        raise InputError(f"baseline must be a number or 'mean', got {baseline!r}")
    else:
        fin = float(baseline)
    with preserve_model(model):
        t = _resolve_target(model, x, target, batch_size)
        out = _curve(model, x, x, fin, sop, n, t, output, batch_size)
    curve = out.to(torch.float64) / out[:, :1].to(torch.float64)
    k = torch.arange(n + 1, device=x.device)
    valid = k[None, :] <= n_seg[:, None]
    frac = k[None, :].to(torch.float64) / n_seg[:, None].to(torch.float64)
    # trapezoid over k = 0..N_i with step 1 / N_i: (sum - c_0/2 - c_N/2) / N_i
    last = curve.gather(1, n_seg[:, None])[:, 0]
    area = ((curve * valid).sum(1) - curve[:, 0] / 2 - last / 2) / n_seg.to(torch.float64)
    return CurveResult(curve, frac.clamp(max=1.0), 1.0 - area, t)


@metric("selectivity", category="faithfulness", higher_is_better=False, needs=("model", "images"),
        reference="Montavon et al. 2018, Methods for interpreting and understanding deep neural networks "
                  "(Digital Signal Processing), section 4.1, selectivity", score=_score_fn("selectivity", "auc"))
def selectivity(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: int | torch.Tensor | None = None,
                *, patch_size: int = 8, baseline: float = 0.0, output: str = "softmax",
                batch_size: int | None = None) -> CurveResult:
    """Remove ``patch_size`` patches cumulatively in descending order of summed attribution
    (every patch; a grid centred on the image, border patches cut, as Quantus pads) by
    ``baseline``; curve[:, k] = f(x^k), the target's output after k patches (k = 0..P;
    Quantus ``Selectivity`` returns curve[:, 1:], with baseline "black" = the image minimum).
    auc = trapezoid on [0, 1], (sum - s_0/2 - s_P/2) / P: lower is better (a steep drop).
    """
    _, _, h, w = x.shape
    n_patches = -(-h // patch_size) * -(-w // patch_size) if patch_size >= 1 else 0
    res = region_perturbation(model, x, maps, target, patch_size=patch_size, regions=max(n_patches, 1),
                              baseline=float(baseline), output=output, batch_size=batch_size)
    with preserve_model(model):
        y = perturbed_outputs(model, x, 1, lambda si, pi: x[si], res.targets, output=output,
                              batch_size=batch_size)
    curve = y - res.curve  # region_perturbation's curve is f(x) - f(x^k)
    return CurveResult(curve, res.fraction, _auc(curve), res.targets)


def _seuclidean(q: torch.Tensor, r: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """scipy's standardised Euclidean distance between rows of q (Q, F) and r (R, F); features
    with zero variance in the reference set are left out (scipy would give 0/0 = NaN)."""
    w = torch.where(var > 0, 1.0 / torch.where(var > 0, var, 1.0), 0.0)
    diff = q[:, None, :] - r[None, :, :]
    return (diff.square() * w).sum(-1).sqrt()


@metric("sufficiency", category="faithfulness", higher_is_better=True, needs=("model", "images"),
        reference="Dasgupta et al. 2022, Framework for evaluating faithfulness of local explanations (ICML), "
                  "sufficiency; as in Quantus 0.6.0", score=lambda fn, ctx: {"sufficiency": _sufficiency_ctx(fn, ctx)})
def sufficiency(maps: torch.Tensor, predictions: torch.Tensor, *, reference_maps: torch.Tensor | None = None,
                reference_predictions: torch.Tensor | None = None, threshold: float = 0.6,
                use_abs: bool = True) -> torch.Tensor:
    """Share of a sample's neighbours in explanation space that share its predicted class.

    Distances: standardised Euclidean (scipy ``seuclidean``, variances of the reference maps as
    scipy computes them for cdist(R, R)) between flattened (|a| by default) maps, divided by the
    largest distance within the reference set; neighbours: normalised distance <= ``threshold``.

    A set-level metric made per-sample: the neighbours come from a *fixed reference set*
    (``reference_maps`` (R, H, W), ``reference_predictions`` (R,)), so a sample's score depends
    on it and on nothing else. Without one, the reference is the batch itself, each sample
    excluding itself: then the scores equal Quantus ``Sufficiency`` (with ``normalise=False``)
    and do depend on the batch. NaN where a sample has no neighbour (Quantus returns 0 there).
    Returns float64 (B,).
    """
    a = check_maps(maps).to(torch.float64).reshape(maps.shape[0], -1)
    a = a.abs() if use_abs else a
    pred = torch.as_tensor(predictions, device=maps.device).reshape(-1)
    if pred.shape[0] != a.shape[0]:
        raise InputError(f"predictions must be ({a.shape[0]},), got {tuple(pred.shape)}")
    own = reference_maps is None
    if own:
        r, rp = a, pred
    else:
        if reference_predictions is None:
            raise InputError("reference_maps need reference_predictions")
        r = check_maps(reference_maps, "reference_maps").to(torch.float64).reshape(reference_maps.shape[0], -1)
        r = r.abs() if use_abs else r
        rp = torch.as_tensor(reference_predictions, device=maps.device).reshape(-1)
        if r.shape[1] != a.shape[1] or rp.shape[0] != r.shape[0]:
            raise InputError("reference maps/predictions do not match the maps")
    if r.shape[0] < 2:
        raise InputError("sufficiency needs a reference set of at least 2 maps")
    var = torch.cat([r, r]).var(0, unbiased=True)  # what scipy's cdist(R, R, "seuclidean") uses
    scale = _seuclidean(r, r, var).amax()
    d = _seuclidean(a, r, var) / torch.where(scale > 0, scale, 1.0)
    near = d <= threshold
    if own:
        near &= ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    same = (pred[:, None] == rp[None, :]) & near
    k = near.sum(1)
    return torch.where(k > 0, same.sum(1).to(torch.float64) / k.clamp_min(1), float("nan"))


def _sufficiency_ctx(fn, ctx: ScoreContext) -> torch.Tensor:
    with preserve_model(ctx.model), torch.no_grad():
        pred = ctx.model(ctx.images).argmax(-1)
    opts = ctx.opts("sufficiency")
    return fn(ctx.maps, pred, **opts)
