"""Sanity check by model parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps").

Layers (modules that own parameters) are re-initialised cascading from the output (or one at a
time, "independent"), the input is re-explained after each step, and the new map is compared
with the original map per sample: Spearman rank correlation of |a| and of a, and SSIM. A method
that depends on the model decorrelates; one that ignores it (an edge detector) does not.

The model is randomised in place: every parameter and buffer is snapshotted first and copied
back afterwards (bitwise), also when the explainer raises. Each layer draws from its own seed
(``derive_seed(seed, layer name)``), so results do not depend on the layer order or on the
global RNG, which is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medxai._util.seed import derive_seed
from medxai._util.validate import check_images
from medxai.errors import InputError
from medxai.explain.base import preserve_model
from medxai.metrics._common import average_ranks, minmax
from medxai.metrics.registry import ScoreContext, metric

__all__ = [
    "RandomisationResult",
    "model_randomisation",
    "randomisable_layers",
    "restore_on_exit",
    "spearman",
    "ssim",
]

Explainer = str | Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Spearman rank correlation of (B, ...) and (B, ...) (average ranks for ties,
    as scipy.stats.spearmanr); NaN where either sample is constant. float64 (B,)."""
    ra = average_ranks(a.reshape(a.shape[0], -1))
    rb = average_ranks(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / torch.where(den > 0, den, 1.0), float("nan"))


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, win_size: int = 7,
         spatial_dims: int = 2) -> torch.Tensor:
    """Mean SSIM per sample of (B, H, W) or (B, C, H, W) images (channels averaged), equal to
    ``skimage.metrics.structural_similarity(a, b, data_range=data_range, win_size=7)`` (uniform
    window, sample covariance, K1 0.01, K2 0.03, borders of (win_size - 1) / 2 excluded). float64 (B,).

    ``spatial_dims=3``: volumes (B, D, H, W) or (B, C, D, H, W) with a win^3 cube window and
    covariance factor N / (N - 1), N = win^3: skimage's N-D ``structural_similarity`` on each volume.
    """
    x = a.to(torch.float64)
    y = b.to(torch.float64)
    if x.ndim == spatial_dims + 1:
        x, y = x[:, None], y[:, None]
    sp = tuple(x.shape[-spatial_dims:])
    if min(sp) < win_size:
        raise InputError(f"SSIM needs at least {win_size} pixels along every axis, got {sp}")
    avg = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    pool = lambda t: avg(t, win_size, stride=1)
    ux, uy = pool(x), pool(y)
    n = win_size**spatial_dims
    cov = n / (n - 1)
    vx = cov * (pool(x * x) - ux * ux)
    vy = cov * (pool(y * y) - uy * uy)
    vxy = cov * (pool(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in definition (forward) order: (qualified name, module)."""
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


@contextmanager
def restore_on_exit(model: nn.Module) -> Iterator[nn.Module]:
    """Snapshot every parameter and buffer (object and value) and put them back on exit, bitwise,
    also on error; parameters or buffers replaced inside the block are swapped back."""
    saved = []
    for m in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(m, kind).items():
                if t is not None:
                    saved.append((m, kind, name, t, t.detach().clone()))
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, kind, name, t, value in saved:
                getattr(m, kind)[name] = t
                t.copy_(value)


def _block_of(name: str) -> str:
    """``layer2.1.conv1`` -> ``layer2.1``; ``blocks.3.attn.qkv`` -> ``blocks.3``; ``fc`` -> ``fc``."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def _reinit(name: str, module: nn.Module, seed: int) -> None:
    """Re-initialise one module's own parameters from a generator seeded by (seed, name)."""
    devices = sorted({p.device.index for p in module.parameters(recurse=False) if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(derive_seed(seed, "randomise", name) % 2**63)
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
                p.normal_(0.0, std)


def select_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to randomise: ``layers`` by name (unknown names refused) or every
    layer with parameters (``randomisable_layers``); a model without any is refused."""
    known = randomisable_layers(model)
    if layers is not None:
        by_name = dict(known)
        missing = [n for n in layers if n not in by_name]
        if missing:
            raise InputError(f"unknown layers {missing}; layers with parameters: {[n for n, _ in known]}")
        known = [(n, by_name[n]) for n in layers]
    if not known:
        raise InputError("the model has no layer with parameters to randomise")
    return known


def _explain(explainer: Explainer, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             kwargs: dict) -> torch.Tensor:
    if isinstance(explainer, str):
        from medxai.explain import explain

        maps = explain(model, x, explainer, target, **kwargs)
    else:
        maps = explainer(model, x, target, **kwargs)
    if not isinstance(maps, torch.Tensor) or maps.shape[0] != x.shape[0] or maps.ndim < 3:
        raise InputError("the explainer must return a (B, [C,] H, W) tensor of maps")
    return maps.detach()


@dataclass
class RandomisationResult:
    """Per-step similarity to the original map.

    layers: the layer(s) randomised at each step (cascading: the newly added layer; the model
    at step i has layers[0..i] randomised); spearman_abs, spearman, ssim: (L, B) float64;
    order: "cascading" | "independent". The unrandomised model is not a step.
    """

    layers: list[str]
    spearman_abs: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor
    order: str

    def score(self) -> float:
        """Mean Spearman(|a|) over every randomised step and sample (NaN-free mean; the
        unrandomised model is excluded, unlike Quantus 0.6.0's MPRT average)."""
        v = self.spearman_abs
        ok = torch.isfinite(v)
        return float(v[ok].mean()) if bool(ok.any()) else float("nan")

    def passes(self, threshold: float = 0.5) -> bool:
        """The sanity check: the maps decorrelate from the original (score() < threshold)."""
        s = self.score()
        return s == s and s < threshold

    def to_dict(self, threshold: float = 0.5) -> dict:
        mean = lambda t: [float(v) if v == v else None for v in torch.nanmean(t, dim=1).tolist()]
        return {"order": self.order, "layers": self.layers, "spearman_abs": mean(self.spearman_abs),
                "spearman": mean(self.spearman), "ssim": mean(self.ssim), "score": self.score(),
                "threshold": threshold, "passes": self.passes(threshold)}


def _score(fn, ctx: ScoreContext) -> dict[str, torch.Tensor]:
    res = fn(ctx.model, ctx.explainer, ctx.images, ctx.targets, **ctx.opts("model_randomisation"))
    return {"randomisation_spearman_abs": torch.nanmean(res.spearman_abs, 0),
            "randomisation_ssim": torch.nanmean(res.ssim, 0)}


@metric("model_randomisation", category="randomisation", higher_is_better=False,
        needs=("model", "images", "explainer"),
        reference="Adebayo et al. 2018, Sanity checks for saliency maps (NeurIPS), cascading randomisation",
        columns=("randomisation_spearman_abs", "randomisation_ssim"), score=_score)
def model_randomisation(model: nn.Module, explainer: Explainer, x: torch.Tensor,
                        target: int | torch.Tensor | None = None, *, order: str = "cascading", seed: int = 0,
                        layers: Sequence[str] | None = None, ssim_on: str = "abs",
                        explainer_kwargs: dict | None = None, granularity: str = "layer",
                        original: torch.Tensor | None = None) -> RandomisationResult:
    """Randomise the model layer by layer and compare each re-explanation with the original map.

    Args:
        model: the classifier; randomised in place and restored exactly (also on error).
        explainer: a method name of ``medxai.explain`` or a callable (model, x, target) -> maps.
        x: (B, C, H, W) images in [0, 1], or volumes (B, C, D, H, W) (SSIM then over 3-D windows).
        target: explained class; None = the class the unrandomised model predicts (kept fixed).
        order: "cascading" (from the output layer down, cumulative) or "independent" (one layer
            at a time, the others original).
        seed: base seed; layer ``name`` is drawn from ``derive_seed(seed, "randomise", name)``.
        layers: names of the layers to randomise (default: every module owning parameters);
            cascading runs them from the last to the first.
        ssim_on: "abs" (SSIM of per-map min-max normalised |a|, default) or "raw" (of a).
        granularity: "layer" (each module owning parameters is a step) or "block" (the modules of
            one block are randomised together: names grouped up to their first index, so
            ``layer2.1.conv1`` and ``layer2.1.bn1`` form ``layer2.1``, ``blocks.3.attn.qkv`` joins
            ``blocks.3``; Adebayo et al. randomised Inception-v3 by named blocks). Each module keeps
            its own seed either way.
        original: the unrandomised model's maps of ``x`` for ``target`` as the explainer returns them,
            when the caller already has them (the audit's explain stage); not recomputed. Needs ``target``.
    """
    check_images(x, ndim=(4, 5))
    if order not in ("cascading", "independent"):
        raise InputError(f"order must be 'cascading' or 'independent', got {order!r}")
    if ssim_on not in ("abs", "raw"):
        raise InputError(f"ssim_on must be 'abs' or 'raw', got {ssim_on!r}")
    kw = dict(explainer_kwargs or {})
    known = select_layers(model, layers)
    if granularity not in ("layer", "block"):
        raise InputError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in known:
        groups.setdefault(_block_of(name) if granularity == "block" else name, []).append((name, module))
    steps = list(reversed(groups.items()))  # from the output

    sd = x.ndim - 2

    def prep(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = maps.to(torch.float64).reshape(maps.shape[0], -1, *maps.shape[-sd:])
        s = m.abs() if ssim_on == "abs" else m
        return m.abs(), m, minmax(s, sd)

    if original is not None and target is None:
        raise InputError("original maps need the target they explain (target=None re-derives it)")
    with restore_on_exit(model):
        if target is None:
            with preserve_model(model), torch.no_grad():
                target = model(x).argmax(-1)
        if original is None:
            original = _explain(explainer, model, x, target, kw)
        elif original.shape[0] != x.shape[0] or original.ndim < 3:
            raise InputError(f"original maps must be (B, [C,] H, W) with B = {x.shape[0]}, got {tuple(original.shape)}")
        orig_abs, orig, orig_s = prep(original.detach().to(x.device))
        rows_a, rows, rows_s = [], [], []
        with restore_on_exit(model):
            for _, members in steps:
                with restore_on_exit(model) if order == "independent" else nullcontext():
                    for name, module in members:
                        _reinit(name, module, seed)
                    maps = _explain(explainer, model, x, target, kw)
                if maps.shape != original.shape:
                    raise InputError(f"original maps {tuple(original.shape)} differ in shape from the explainer's "
                                     f"{tuple(maps.shape)}")
                ma, m, ms = prep(maps)
                rows_a.append(spearman(ma, orig_abs))
                rows.append(spearman(m, orig))
                rows_s.append(ssim(ms, orig_s, data_range=1.0, spatial_dims=sd))
    return RandomisationResult([n for n, _ in steps], torch.stack(rows_a), torch.stack(rows), torch.stack(rows_s),
                               order)
