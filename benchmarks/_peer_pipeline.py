"""The audit's core numbers computed the way a user would without medxai, with the peer libraries'
recommended usage: scikit-learn metrics with a numpy percentile bootstrap, ART's PGD, captum's
explainers, Quantus' localisation, faithfulness and randomisation metrics.

No peer offers the corruptions, so the corruption table applies medxai's corruption functions
(``medxai.corruptions.apply``) and scores them with scikit-learn. Everything else here is the
peers' code; medxai is used only to read the config's values.

Definitions, side by side with the audit's:

- balanced accuracy / ROC AUC: ``sklearn.metrics`` on the whole test split (argmax prediction, the
  positive class's softmax probability); the 95 % CI a percentile bootstrap of rows resampled with
  replacement from ``numpy.random.default_rng(seed)`` (the audit's scheme; see ``medxai.evaluate``).
- PGD success rate: ART ``ProjectedGradientDescentPyTorch`` (L-inf or L2, ``max_iter=steps``,
  ``eps_step=2.5 eps / steps`` as the audit's default, one random start), over the images the
  model classifies correctly without attack, each eps attacked independently (the audit counts an
  image fooled at a smaller eps as fooled at every larger one, and keeps each image's best iterate).
- energy pointing game: ``quantus.AttributionLocalisation`` (Kohlbrenner et al. 2020) with its
  defaults (``abs=True``: |a|; medxai's ``energy_pointing_game`` sums relu(a): the same for
  non-negative maps (saliency, Grad-CAM), a different definition for signed maps (IG)).
- deletion: ``quantus.PixelFlipping`` (Bach et al. 2015) with ``perturb_baseline=0.0`` (Quantus'
  "black" is each image's minimum, not 0) and ``features_in_step = ceil(HW / steps)``: its curve is
  medxai's deletion curve without the clean point, so the RISE AUC (Petsiuk et al. 2018: trapezoid
  on [0, 1] including the clean image) is rebuilt from it and the clean softmax probability.
  (``quantus.RegionPerturbation`` is AOPC over patches, medxai's ``region_perturbation``, not deletion.)
  Quantus orders equal map values with ``np.argsort(-a)`` (quicksort: arbitrary), medxai by lowest
  index (stable): maps with ties (Grad-CAM's ReLU zeros) give different curves; ``ties_broken``
  gives Quantus medxai's order.
- random-map deletion baseline (the scorecard's faithfulness reference): the same Quantus deletion
  on uniform random maps drawn as the audit draws them (``torch.Generator().manual_seed(seed + 7919)``),
  once per model.
- MPRT: ``quantus.MPRT`` (Adebayo et al. 2018), cascading top-down over every module with
  ``reset_parameters`` (medxai's audit randomises by block with its own draws: a different
  randomisation, so only the fully randomised model's mean Spearman is compared, informatively).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, K) softmax probabilities of a [0, 1] batch."""
    return np.concatenate([_np(torch.softmax(model(x[i:i + batch_size]), 1)) for i in range(0, len(x), batch_size)])


def classification(y: np.ndarray, prob: np.ndarray, n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """Balanced accuracy and ROC AUC (binary: positive class 1) with percentile-bootstrap 95 % CIs."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred, score = prob.argmax(1), prob[:, 1]
    rng = np.random.default_rng(seed)
    ba, auc = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            i = rng.integers(0, len(y), size=len(y))
            ba.append(balanced_accuracy_score(y[i], pred[i]))
            auc.append(roc_auc_score(y[i], score[i]) if len(np.unique(y[i])) == 2 else np.nan)
        out = {}
        for name, value, reps in (("balanced_accuracy", balanced_accuracy_score(y, pred), ba),
                                  ("auc", roc_auc_score(y, score), auc)):
            r = np.asarray(reps, float)
            r = r[np.isfinite(r)]
            lo, hi = np.percentile(r, [2.5, 97.5]) if r.size else (np.nan, np.nan)
            out[name] = {"value": float(value), "ci_low": float(lo), "ci_high": float(hi)}
    return out


def pgd_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: list[float], steps: int,
                norm: str = "linf", seed: int = 0) -> list[float]:
    """ART PGD success rate per eps: share of the initially correct images misclassified under attack."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    xs, ys = _np(x).astype(np.float32), _np(y).astype(int)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=int(probabilities(model, x[:1]).shape[1]), clip_values=(0.0, 1.0))
    correct = clf.predict(xs, batch_size=128).argmax(1) == ys
    out = []
    for eps in eps_list:
        if eps == 0 or not correct.any():
            out.append(0.0)
            continue
        np.random.seed(seed)  # noqa: NPY002 (ART draws its random start from numpy's global generator)
        atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf if norm == "linf" else 2, eps=eps,
                                              eps_step=2.5 * eps / steps, max_iter=steps, num_random_init=1,
                                              batch_size=128, verbose=False)
        adv = atk.generate(xs[correct], ys[correct])
        out.append(float((clf.predict(adv, batch_size=128).argmax(1) != ys[correct]).mean()))
    return out


def corruption_drops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], severities: list[int],
                     seed: int) -> dict[str, list[float | None]]:
    """Balanced-accuracy drop (clean - corrupted) per corruption and level, scikit-learn scored;
    the corruptions are medxai's (no peer library has them). None above a corruption's maximum level."""
    from sklearn.metrics import balanced_accuracy_score

    from medxai.corruptions.base import apply, max_severity

    yn = _np(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = balanced_accuracy_score(yn, probabilities(model, x).argmax(1))
        return {n: [None if s > max_severity(n) else float(
            clean - balanced_accuracy_score(yn, probabilities(model, apply(x, n, s, seed=seed)).argmax(1)))
            for s in severities] for n in names}


def captum_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, layer: nn.Module,
                ig_steps: int = 50) -> torch.Tensor:
    """(N, 1, H, W) captum maps: Saliency (|grad|, max over channels), IntegratedGradients (zero
    baseline, Gauss-Legendre, summed over channels), LayerGradCam (ReLU, bilinear upsampling)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    x = x.clone().requires_grad_(True)
    t = target.long()
    if method == "saliency":
        return Saliency(model).attribute(x, target=t, abs=True).amax(1, keepdim=True).detach()
    if method == "integrated_gradients":
        # internal_batch_size: captum's documented bound on the (steps x images) batch; without it the
        # large size's 400 x 16 path images at once ran out of this machine's 24 GiB
        a = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=ig_steps,
                                                 method="gausslegendre", internal_batch_size=256)
        return a.sum(1, keepdim=True).detach()
    if method == "gradcam":
        a = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(x.shape[-2:]), "bilinear").detach()
    raise ValueError(f"no captum equivalent wired for method {method!r}")


def quantus_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                   masks: torch.Tensor | None, deletion_steps: int | None) -> dict[str, np.ndarray]:
    """Per image: Quantus energy pointing game (NaN for an empty mask; without masks: not computed)
    and deletion AUC rebuilt from Quantus' PixelFlipping curve (see the module docstring; None
    ``deletion_steps``: not computed)."""
    from benchmarks._harness import import_quantus

    quantus = import_quantus()
    xs, ys = _np(x).astype(np.float32), _np(target).astype(int)
    a = _np(maps).astype(np.float64 if maps.dtype == torch.float64 else np.float32)
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if masks is not None:
            s = _np(masks).astype(np.float32)
            keep = s.reshape(len(s), -1).sum(1) > 0
            epg = np.full(len(xs), np.nan)
            if keep.any():
                m = quantus.AttributionLocalisation(disable_warnings=True)
                epg[keep] = m(model=model, x_batch=xs[keep], y_batch=ys[keep], a_batch=a[keep], s_batch=s[keep],
                              device="cpu")
            out["energy_pointing_game"] = epg
        if deletion_steps is None:
            return out
        step = math.ceil(a[0].size / deletion_steps)
        pf = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, disable_warnings=True)
        curve = np.asarray(pf(model=model, x_batch=xs, y_batch=ys, a_batch=a, device="cpu", softmax=True))
    s0 = probabilities(model, x)[np.arange(len(ys)), ys]
    n = curve.shape[1]
    out["deletion"] = (s0 / 2 + curve[:, :-1].sum(1) + curve[:, -1] / 2) / n
    return out


def quantus_mprt(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, method: str,
                 layer_name: str, seed: int, ig_steps: int = 50) -> dict[str, Any]:
    """Quantus MPRT (cascading, top-down) re-explaining with the captum method: mean Spearman per
    randomised layer (``layer_name``: the Grad-CAM layer, looked up in each randomised copy)."""
    from benchmarks._harness import import_quantus

    quantus = import_quantus()

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kw: Any) -> np.ndarray:
        xt = torch.as_tensor(inputs, dtype=torch.float32)
        layer = dict(model.named_modules()).get(layer_name)
        return _np(captum_maps(model, xt, torch.as_tensor(targets), method, layer, ig_steps))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = quantus.MPRT(layer_order="top_down", seed=seed, disable_warnings=True)
        res = m(model=model, x_batch=_np(x).astype(np.float32), y_batch=_np(target).astype(int),
                a_batch=_np(maps).astype(np.float32), explain_func=explain_func, device="cpu")
    layers = [k for k in res if k != "original"]
    return {"layers": layers, "spearman": [float(np.mean(res[k])) for k in layers]}


def tied_share(maps: torch.Tensor) -> float:
    """Share of the pixels whose map value equals another pixel's value in the same image."""
    tied = 0
    for f in maps.reshape(len(maps), -1):
        _, counts = torch.unique(f, return_counts=True)
        tied += int(counts[counts > 1].sum())
    return tied / maps[0].numel() / len(maps)


def ties_broken(maps: torch.Tensor) -> torch.Tensor:
    """float64 maps whose equal values are ordered by flat index (lowest first in descending order),
    by subtracting index * (a step below the smallest gap between distinct values): medxai's order."""
    flat = maps.double().reshape(len(maps), -1)
    out = []
    for f in flat:
        u = torch.unique(f)
        gap = float((u[1:] - u[:-1]).min()) if len(u) > 1 else 1.0
        out.append(f - torch.arange(len(f), dtype=f.dtype) * (gap / (2 * len(f))))
    return torch.stack(out).reshape(maps.shape)


def run_peer(models: dict[str, nn.Module], test: tuple[torch.Tensor, torch.Tensor], sample: Any, cfg: Any,
             layer_of: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Every number for every model; returns (numbers, wall seconds). ``test``: the whole test split
    (x, y); ``sample``: the audit's evaluation sample (``x``, ``y``, ``masks``); ``cfg``: the AuditConfig.
    ``numbers[model]["seconds"]``: the wall time of each part."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    ig_steps = int(cfg.explain.options.get("integrated_gradients", {}).get("n_steps", 50))
    del_steps = int(cfg.score.options.get("deletion", {}).get("steps", 224))
    for name, model in models.items():
        model.eval()
        r: dict[str, Any] = {"seconds": {}}
        clock = [time.perf_counter()]

        def lap(part: str, r: dict[str, Any] = r, clock: list[float] = clock) -> None:
            now = time.perf_counter()
            r["seconds"][part] = r["seconds"].get(part, 0.0) + now - clock[0]
            clock[0] = now

        xt, yt = test
        r["metrics"] = classification(_np(yt), probabilities(model, xt), int(cfg.evaluation.get("n_boot", 1000)),
                                      cfg.seed)
        lap("evaluate")
        na = cfg.attack.n
        r["success_rate"] = pgd_success(model, sample.x[:na], sample.y[:na], cfg.attack.eps, cfg.attack.steps,
                                        cfg.attack.norm, cfg.seed)
        lap("attack")
        nc = cfg.corruption.n
        r["corruption"] = corruption_drops(model, sample.x[:nc], sample.y[:nc], cfg.corruption.names,
                                           cfg.corruption.severities, cfg.seed)
        lap("corrupt")
        ns = max(cfg.explain.n_score, cfg.explain.n_show)
        xs, ys = sample.x[:ns], sample.y[:ns]
        masks = None if sample.masks is None else sample.masks[:ns]
        r["maps"], r["scores"] = {}, {}
        for method in cfg.explain.methods:
            maps = captum_maps(model, xs, ys, method, dict(model.named_modules())[layer_of[name]], ig_steps)
            r["maps"][method] = maps
            lap("explain")
            r["scores"][method] = quantus_scores(model, xs, ys, maps, masks, del_steps)
            lap("score")
        if cfg.explain.methods:  # the scorecard's faithfulness baseline: deletion of the same seeded random maps
            noise = torch.rand(r["maps"][cfg.explain.methods[0]].shape,
                               generator=torch.Generator().manual_seed(cfg.seed + 7919), dtype=torch.float32)
            r["random_deletion"] = quantus_scores(model, xs, ys, noise, None, del_steps)["deletion"]
            lap("score")
        r["mprt"] = {}
        for method in cfg.score.sanity_methods or cfg.explain.methods[:1]:
            n = cfg.score.sanity_n
            r["mprt"][method] = quantus_mprt(model, sample.x[:n], sample.y[:n], r["maps"][method][:n], method,
                                             layer_of[name], cfg.seed, ig_steps)
            lap("sanity")
        out[name] = r
    return out, time.perf_counter() - t0
