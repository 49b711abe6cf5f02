"""LIME for images (Ribeiro 2016) with marcotcr ``lime_image`` semantics, batched in torch.

Per image: superpixels (SLIC by default, quickshift as in lime, or given); ``num_samples`` binary
on/off vectors z (first all-on; seeded); off superpixels filled with the superpixel's mean colour
(lime's ``hide_color=None``) or a constant; the model's outputs y on every perturbed image
(one engine pass for the whole batch, all targets at once); sample weights
``pi(z) = sqrt(exp(-d^2 / 0.25^2))`` with d the cosine distance of z to the all-on vector; and a
weighted ridge regression ``min sum_n pi_n (y_n - b - z_n . w)^2 + alpha |w|^2`` (alpha = 1, like
lime's ``Ridge(alpha=1)`` on all features) per explained target, solved in closed form in float64,
batched over images and targets. Fit score = weighted R^2 (sklearn's ``Ridge.score``), local
prediction = ``b + sum w`` (the all-on sample), as lime's ``score`` and ``local_pred``.

What is explained: lime explains class *probabilities* (its ``classifier_fn`` returns them), so
``Lime`` defaults to ``output="softmax"``; use ``output="sigmoid"`` for multilabel models and
``"logit"`` to explain logits.

Default segmentation: ``skimage.segmentation.slic(n_segments=50, compactness=10, sigma=1,
start_label=0)`` on the RGB image (grayscale repeated to RGB, as lime does), which gives about
35-45 superpixels at 64-224 px; lime's quickshift (kernel 4, max_dist 200, ratio 0.2) gives about
30-35 at 224 px but collapses to 1-6 at 64 px, and is ~10x slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medxai._util.validate import check_images
from medxai.errors import InputError
from medxai.explain.base import Attribution, preserve_model
from medxai.explain.engine import (
    DEFAULT_MEMORY_BUDGET,
    InputBuffer,
    blend_into,
    perturbed_outputs,
    sample_runs,
)
from medxai.explain.registry import REGISTRY

__all__ = ["Lime", "LimeResult", "kernel_weights", "superpixels", "weighted_ridge"]

SEGMENTATIONS = ("slic", "quickshift")


def superpixels(x: torch.Tensor, method: str = "slic", **params) -> torch.Tensor:
    """Superpixels of every image: (B, C, H, W) in [0, 1] -> (B, H, W) long labels 0..F_b-1.

    ``slic`` (default n_segments=50, compactness=10, sigma=1) or ``quickshift`` (lime's
    kernel_size=4, max_dist=200, ratio=0.2); extra ``params`` go to the skimage function.
    One- and three-channel images are segmented as RGB (gray repeated), like lime.
    Volumes (B, C, D, H, W) -> (B, D, H, W) supervoxels: 3-D SLIC (``channel_axis=None`` for one
    channel, else the channels last; no Lab conversion; default n_segments=50, compactness=0.1,
    sigma=1: compactness is relative to intensities in [0, 1], not to Lab's 0..100);
    quickshift is 2-D only.
    """
    from skimage.segmentation import quickshift, slic

    if method not in SEGMENTATIONS:
        raise InputError(f"segmentation must be one of {SEGMENTATIONS} or a (B, H, W) tensor, got {method!r}")
    if x.ndim == 5:
        return _supervoxels(x, method, **params)
    imgs = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    out = []
    for im in imgs:
        if im.shape[-1] == 1:
            im = np.repeat(im, 3, axis=-1)
        rgb = im.shape[-1] == 3
        if method == "slic":
            kw = {"n_segments": 50, "compactness": 10.0, "sigma": 1.0, "start_label": 0,
                  "channel_axis": -1, "convert2lab": rgb} | params
            seg = slic(im, **kw)
        else:
            if not rgb:
                raise InputError("quickshift needs 1- or 3-channel images")
            kw = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, "rng": 0} | params
            seg = quickshift(im, **kw)
        out.append(torch.from_numpy(np.ascontiguousarray(seg)).long())
    return relabel(torch.stack(out).to(x.device))


def _supervoxels(x: torch.Tensor, method: str, **params) -> torch.Tensor:
    """3-D SLIC supervoxels of (B, C, D, H, W) volumes -> (B, D, H, W) labels 0..F_b-1."""
    from skimage.segmentation import slic

    if method != "slic":
        raise InputError("volumes are segmented with 3-D SLIC only (quickshift is 2-D)")
    vols = x.detach().to("cpu", torch.float64).numpy()
    out = []
    for v in vols:
        one = v.shape[0] == 1
        im = v[0] if one else np.moveaxis(v, 0, -1)
        kw = {"n_segments": 50, "compactness": 0.1, "sigma": 1.0, "start_label": 0,
              "channel_axis": None if one else -1} | params
        out.append(torch.from_numpy(np.ascontiguousarray(slic(im, **kw))).long())
    return relabel(torch.stack(out).to(x.device))


def relabel(segments: torch.Tensor) -> torch.Tensor:
    """Map each image's segment ids to 0..F_b-1 in increasing order of the original id."""
    out = torch.empty_like(segments, dtype=torch.long)
    for b in range(segments.shape[0]):
        out[b] = torch.unique(segments[b], return_inverse=True)[1]
    return out


def kernel_weights(z: torch.Tensor, n_features: torch.Tensor, kernel_width: float = 0.25) -> torch.Tensor:
    """lime's sample weights ``sqrt(exp(-d^2 / width^2))``, d = cosine distance of z to all-on.

    z (B, N, F) binary (columns >= F_b are ignored), n_features (B,) -> (B, N) float64.
    For binary z with k of F_b features on, d = 1 - sqrt(k / F_b) (d = 1 when k = 0, as sklearn).
    """

    f = n_features.to(z.device, torch.float64)
    cols = torch.arange(z.shape[-1], device=z.device)
    k = (z.bool() & (cols < n_features.to(z.device)[:, None])[:, None, :]).sum(-1).double()
    d = 1.0 - torch.sqrt(k / f[:, None])
    return torch.sqrt(torch.exp(-(d**2) / kernel_width**2))


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted ridge with intercept, closed form, batched: sklearn ``Ridge(alpha).fit(z, y, w)``.

    z (B, N, F), y (B, N, T), w (B, N) -> coef (B, T, F), intercept (B, T), weighted R^2 (B, T),
    all float64. Solves ``(Zc' W Zc + alpha I) coef = Zc' W yc`` with weighted centring.
    All-zero columns (padding) get coefficient 0.
    """
    z, y, w = z.double(), y.double(), w.double()
    sw = w.sum(1, keepdim=True)  # (B, 1)
    zbar = (w[..., None] * z).sum(1) / sw  # (B, F)
    ybar = (w[..., None] * y).sum(1) / sw  # (B, T)
    zc, yc = z - zbar[:, None], y - ybar[:, None]
    zw = zc * w[..., None]
    a = zw.transpose(1, 2) @ zc + alpha * torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    coef = torch.linalg.solve(a, zw.transpose(1, 2) @ yc)  # (B, F, T)
    intercept = ybar - (zbar[..., None] * coef).sum(1)
    resid = y - intercept[:, None] - z @ coef
    ss_res = (w[..., None] * resid**2).sum(1)
    ss_tot = (w[..., None] * yc**2).sum(1)
    # sklearn's r2_score (force_finite): 1 for a perfect fit of constant y, 0 otherwise
    score = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp(min=1e-300),
                        torch.where(ss_res == 0, 1.0, 0.0).to(ss_res.dtype))
    return coef.transpose(1, 2), intercept, score


@dataclass
class LimeResult:
    """Everything a LIME fit gives, per image b and explained target t.

    segments (B, H, W) long, labels 0..F_b-1; n_features (B,); targets (B, T);
    weights (B, T, F) per-superpixel coefficients (F = max F_b, zero beyond F_b);
    intercept, local_pred, score (B, T); perturbations (B, N, F) bool; outputs (B, N, T) the
    explained quantity on every perturbed image; sample_weights (B, N).
    Float results are in the input's dtype except ``sample_weights`` (float64).
    """

    segments: torch.Tensor
    n_features: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    intercept: torch.Tensor
    local_pred: torch.Tensor
    score: torch.Tensor
    perturbations: torch.Tensor
    outputs: torch.Tensor
    sample_weights: torch.Tensor
    output: str

    def pixel_map(self) -> torch.Tensor:
        """Weight of each pixel's superpixel: (B, T, 1, H, W)."""
        b, t, _ = self.weights.shape
        seg = self.segments.reshape(b, 1, -1).expand(b, t, -1)
        return self.weights.gather(2, seg).reshape(b, t, 1, *self.segments.shape[1:])

    def ranking(self) -> torch.Tensor:
        """Superpixel ids by decreasing weight, (B, T, F) (stable; padding columns last)."""
        w = self.weights.clone()
        cols = torch.arange(w.shape[-1], device=w.device)
        w[(cols >= self.n_features[:, None])[:, None, :].expand_as(w)] = -torch.inf
        return torch.sort(w, dim=-1, descending=True, stable=True).indices


def _fill(x: torch.Tensor, seg: torch.Tensor, n_max: int, hide_color) -> torch.Tensor:
    """The image shown where a superpixel is off: its mean colour (None) or a constant."""
    b, c = x.shape[:2]
    n = seg[0].numel()
    if hide_color is None:
        idx = seg.reshape(b, 1, n).expand(b, c, n)
        sums = torch.zeros(b, c, n_max, dtype=x.dtype, device=x.device).scatter_add_(2, idx, x.reshape(b, c, -1))
        counts = torch.zeros(b, 1, n_max, dtype=x.dtype, device=x.device).scatter_add_(
            2, seg.reshape(b, 1, -1), torch.ones(b, 1, n, dtype=x.dtype, device=x.device))
        return (sums / counts.clamp(min=1)).gather(2, idx).reshape(x.shape)
    col = torch.as_tensor(hide_color, dtype=x.dtype, device=x.device).reshape(-1)
    if col.numel() not in (1, c) or not bool(torch.isfinite(col).all()) or float(col.min()) < 0 or float(col.max()) > 1:
        raise InputError(f"hide_color must be None, a value in [0, 1] or {c} values in [0, 1]")
    return col.reshape(1, -1, *([1] * (x.ndim - 2))).expand(x.shape)


@REGISTRY.register("lime")
class Lime(Attribution):
    """LIME for images; ``attribute`` returns each pixel's superpixel weight (B, 1, H, W) per target
    (volumes: each voxel's supervoxel weight (B, 1, D, H, W), 3-D SLIC by default).

    Args:
        model: classifier returning logits (B, K).
        segmentation: "slic" (default), "quickshift" or a (B, H, W) int tensor ((B, D, H, W) for volumes).
        segmentation_params: extra keyword arguments of the skimage segmentation.
        num_samples: perturbed samples per image (1000; the first is all-on).
        hide_color: None (superpixel mean colour, lime's default) or a constant in [0, 1].
        kernel_width: 0.25 (lime). alpha: ridge penalty, 1 (lime).
        seed: seed of the perturbation matrix (a per-call ``seed=`` overrides it).
        output: "softmax" (default, lime explains probabilities), "sigmoid" or "logit".
        batch_size / memory_budget: images per model call.
        channels_last: NHWC batches (None: on CPU for a model with convolutions).
    ``explain_superpixels`` returns a :class:`LimeResult` with weights, intercept, local
    prediction and fit score; ``perturbations=`` (N, F) or (B, N, F) binary fixes the matrix.
    """

    needs_grad = False
    image_ndims = (4, 5)

    def __init__(self, model: nn.Module, *, segmentation: str | torch.Tensor = "slic",
                 segmentation_params: dict | None = None, num_samples: int = 1000,
                 hide_color: float | Sequence[float] | None = None, kernel_width: float = 0.25,
                 alpha: float = 1.0, seed: int = 0, output: str = "softmax",
                 batch_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 channels_last: bool | None = None) -> None:
        super().__init__(model, output=output)
        if num_samples < 2:
            raise InputError(f"num_samples must be >= 2, got {num_samples}")
        self.segmentation, self.segmentation_params = segmentation, dict(segmentation_params or {})
        self.num_samples, self.hide_color = num_samples, hide_color
        self.kernel_width, self.alpha, self.seed = kernel_width, alpha, seed
        self.batch_size, self.memory_budget = batch_size, memory_budget
        self.channels_last = channels_last

    def _segments(self, x: torch.Tensor, segments) -> torch.Tensor:
        seg = self.segmentation if segments is None else segments
        if isinstance(seg, str):
            return superpixels(x, seg, **self.segmentation_params)
        seg = torch.as_tensor(seg, device=x.device)
        if seg.ndim == x.ndim - 2:
            seg = seg.expand(x.shape[0], *seg.shape)
        if seg.shape != (x.shape[0], *x.shape[2:]) or seg.is_floating_point():
            raise InputError(f"segments must be an int tensor of shape {(x.shape[0], *x.shape[2:])}, "
                             f"got {tuple(seg.shape)} {seg.dtype}")
        return relabel(seg)

    def _perturbations(self, b: int, n_max: int, n_features: torch.Tensor, device, perturbations, seed
                       ) -> torch.Tensor:
        if perturbations is not None:
            z = torch.as_tensor(perturbations, device=device)
            if z.ndim == 2:
                z = z.expand(b, -1, -1)
            if z.ndim != 3 or z.shape[0] != b or z.shape[2] < int(n_features.max()):
                raise InputError(f"perturbations must be (N, F) or ({b}, N, F) with F >= {int(n_features.max())}")
            z = z[..., :n_max].bool()
            if z.shape[-1] < n_max:
                z = torch.cat([z, z.new_zeros(b, z.shape[1], n_max - z.shape[-1])], -1)
        else:
            g = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
            z = torch.randint(0, 2, (b, self.num_samples, n_max), generator=g).bool().to(device)
            z[:, 0] = True
        cols = torch.arange(n_max, device=device)
        return z & (cols < n_features[:, None])[:, None, :]

    def _fit(self, x: torch.Tensor, targets: torch.Tensor, segments=None, perturbations=None,
             seed=None) -> LimeResult:
        seg = self._segments(x, segments)
        b = x.shape[0]
        n_features = seg.reshape(b, -1).amax(1) + 1
        n_max = int(n_features.max())
        z = self._perturbations(b, n_max, n_features, x.device, perturbations, seed)
        fill = _fill(x, seg, n_max, self.hide_color)
        seg_flat = seg.reshape(b, -1)
        z_on = z.to(x.dtype)
        z_off = 1 - z_on

        buffer = InputBuffer(x, self.channels_last, self.model)

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            out = buffer(len(si))
            for b, sl in sample_runs(si):
                shape = (-1, 1, *x.shape[2:])
                on = z_on[b, pi[sl]].index_select(1, seg_flat[b]).reshape(shape)
                off = z_off[b, pi[sl]].index_select(1, seg_flat[b]).reshape(shape)
                blend_into(out[sl], on, x[b], fill[b], off)
            return out

        y = perturbed_outputs(self.model, x, z.shape[1], make, targets, output=self.output,
                              batch_size=self.batch_size, memory_budget=self.memory_budget)  # (B, N, T)
        sw = kernel_weights(z, n_features, self.kernel_width)
        coef, intercept, score = weighted_ridge(z.double(), y.double(), sw, self.alpha)
        local = intercept + coef.sum(-1)
        f = x.dtype
        return LimeResult(segments=seg, n_features=n_features, targets=targets, weights=coef.to(f),
                          intercept=intercept.to(f), local_pred=local.to(f), score=score.to(f),
                          perturbations=z, outputs=y, sample_weights=sw, output=self.output)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, *, segments=None, perturbations=None,
                   seed=None) -> torch.Tensor:
        return self._fit(x, targets, segments, perturbations, seed).pixel_map()

    def explain_superpixels(self, x: torch.Tensor, target: int | torch.Tensor | list | None = None, *,
                            top_k: int | None = None, segments: torch.Tensor | None = None,
                            perturbations: torch.Tensor | None = None, seed: int | None = None) -> LimeResult:
        """The full LIME fit (always with a target axis T, even for a single target)."""
        check_images(x, ndim=self.image_ndims)
        with preserve_model(self.model):
            t = self.targets(x, target, top_k)
            return self._fit(x, t, segments, perturbations, seed)
