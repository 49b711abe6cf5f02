"""The audit's shortcut stages: reliance by intervention, and discovery of unknown shortcuts (SpRAy).

- :func:`intervention_stage`: remove the declared shortcut region (the data's shortcut masks, or a
  fixed box) from the evaluation images and compare prediction flips with a random region of the
  same shape; on synthetic studies also the generator's exact counterfactual (the same image
  rendered without the marker), and the marker transplanted onto negative images without one.
- :func:`discovery_stage`: SpRAy over one method's maps of the explained images: clusters with
  their size, accuracy, mean map and examples; the mean map per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.pipeline.cache import StageResult
from medxai.pipeline.config import DiscoveryConfig, InterventionConfig
from medxai.pipeline.data import EvalSample

__all__ = ["discovery_stage", "intervention_region", "intervention_stage"]


def intervention_region(s: EvalSample, c: InterventionConfig) -> tuple[torch.Tensor | None, str]:
    """(region (N, 1, H, W) bool or None, where it came from / why there is none)."""
    from medxai.evaluate.intervention import box_region

    if c.region in ("auto", "shortcut_masks") and s.shortcut_masks is not None:
        return s.shortcut_masks.bool(), "the data's shortcut masks"
    if c.region == "shortcut_masks":
        return None, "intervention.region is shortcut_masks but the data have no shortcut masks"
    if c.box is not None:
        h, w = s.x.shape[-2:]
        return box_region((h, w), tuple(c.box), n=len(s)), f"the box {c.box} (top, left, height, width)"
    return None, "no shortcut region: the data have no shortcut masks and intervention.box is not set"


def _counterfactuals(dataset: Any, index: list[int]) -> torch.Tensor | None:
    """Images ``index`` of a synthetic study rendered without the shortcut (None for other data)."""
    from medxai.data import SyntheticDataset
    from medxai.data.synthetic import generate_one

    if not isinstance(dataset, SyntheticDataset) or dataset.shortcut is None or dataset.size is not None \
            or dataset.transform is not None:
        return None
    imgs = [generate_one(dataset.study, i, size=dataset.img_size, seed=dataset.seed, split=dataset.split,
                         shortcut=dataset.shortcut, counterfactual=True, **dataset.options)["counterfactual"]
            for i in index]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255.0)


def intervention_stage(d: Path, model: torch.nn.Module, s: EvalSample, dataset: Any, c: InterventionConfig,
                       task: str, n_boot: int, seed: int = 0, logits: torch.Tensor | None = None) -> dict:
    """Reliance on the shortcut region of one model (see the module docstring); JSON-able.

    ``logits``: the sample's clean (N, K) logits (the audit's shared clean forward), else ``s`` is run."""
    from medxai.evaluate.intervention import intervention_effect, transplant_effect

    region, source = intervention_region(s, c)
    if region is None or task == "multilabel":
        return {"reason": source if region is None else "interventions are defined for single-label tasks"}
    keep = region.flatten(1).any(1)
    if not bool(keep.any()):
        return {"reason": f"no evaluation image has a non-empty region ({source})"}
    cf = _counterfactuals(dataset, s.extra["index"]) if c.counterfactual and "index" in s.extra else None
    idx = keep.nonzero().flatten()
    y = s.y[idx].long().numpy()
    out = intervention_effect(model, s.x[idx], region[idx], y, method=c.method,
                              counterfactual=None if cf is None else cf[idx], n_boot=n_boot, seed=seed,
                              clean_logits=None if logits is None else logits[idx.to(logits.device)])
    out["region_source"] = source
    if c.transplant and s.shortcut_masks is not None:
        out["transplant"] = _transplant(model, s, region, n_boot, seed, transplant_effect, logits)
    return out


def _transplant(model: torch.nn.Module, s: EvalSample, region: torch.Tensor, n_boot: int, seed: int,
                fn: Any, logits: torch.Tensor | None = None) -> dict | None:
    """The first image's marker pasted onto the negative images (class 0) that carry none."""
    has = region.flatten(1).any(1)
    targets = (~has) & (s.y == 0) if s.y.ndim == 1 else torch.zeros_like(has)
    if not bool(has.any()) or not bool(targets.any()):
        return None
    donor = int(has.nonzero()[0])
    res = fn(model, s.x[targets], s.x[donor:donor + 1], region[donor:donor + 1], n_boot=n_boot, seed=seed,
             clean_logits=None if logits is None else logits[targets.to(logits.device)])
    return {**res, "donor": s.ids[donor]}


def discovery_stage(d: Path, model: torch.nn.Module, s: EvalSample, ex: StageResult, c: DiscoveryConfig,
                    class_names: list[str], task: str, seed: int = 0, logits: torch.Tensor | None = None) -> dict:
    """SpRAy clusters of one method's maps, with accuracy per cluster; writes ``clusters.png``.

    ``logits``: the sample's clean (N, K) logits, for the predictions (else the model is run on ``s``)."""
    from safetensors.torch import load_file

    from medxai.errors import InputError
    from medxai.metrics.spray import mean_map_per_class, plot_spray, spray
    from medxai.pipeline.figures import class_means_figure

    maps = load_file(str(ex.dir / "maps.safetensors"))["maps"]
    maps = maps[:, 0] if maps.ndim == 5 else maps  # top-k: the most probable finding's maps
    n = min(len(maps), len(s))
    x, ids = s.x[:n], s.ids[:n]
    y = s.y[:n].long().numpy() if s.y.ndim == 1 else None
    pred = None
    if task != "multilabel" and logits is not None:
        pred = logits[:n].argmax(1).cpu().numpy()
    elif task != "multilabel":
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
    try:
        res = spray(maps[:n], size=c.size, max_clusters=c.max_clusters, seed=seed)
    except InputError as exc:
        return {"reason": str(exc)}
    plot_spray(res, x, maps[:n], d / "clusters.png", ids=ids, y_true=y, y_pred=pred)
    if y is not None:
        class_means_figure(mean_map_per_class(maps[:n], y, class_names), d / "class_means.png")
    clusters = res.clusters(y_true=y, y_pred=pred, ids=ids)
    for cl in clusters:
        cl["label_counts"] = {class_names[int(k)] if str(k).isdigit() and int(k) < len(class_names) else str(k): v
                              for k, v in (cl.get("label_counts") or {}).items()}
    return {"n": n, "n_clusters": res.n_clusters, "eigengap": float(res.eigengap), "clusters": clusters,
            "labels": dict(zip(ids, (int(v) for v in res.labels), strict=True)), "png": "clusters.png",
            "class_means_png": "class_means.png" if y is not None else None}

