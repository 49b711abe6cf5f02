"""Shortcut *reliance* by intervention: remove (or transplant) a shortcut region and watch predictions.

A saliency map touching a laterality marker does not show that a classifier relies on it; an
intervention does (Geirhos et al. 2020, "Shortcut learning in deep neural networks"; the
"mask / remove the shortcut" and counterfactual experiments of DeGrave et al. 2021, "AI for
radiographic COVID-19 detection selects shortcuts over signal", Nature Machine Intelligence).
:func:`intervention_effect` replaces the shortcut region, and as a control a random region of the
same shape elsewhere, and reports how often the predicted class flips, with paired percentile
bootstrap CIs (images resampled, ``numpy.random.default_rng(seed)``, 95 %).

Images are float (B, C, H, W) in [0, 1]; models return logits (B, K); probabilities are softmax
over K; the positive class is index ``positive`` (1 by default). Models run in eval mode (their
modules' training flags are restored afterwards) under ``torch.no_grad()``, in batches of ``batch_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medxai._util.validate import check_images, check_logits
from medxai.errors import InputError
from medxai.evaluate.metrics import bootstrap_index_chunks, weighted_auc
from medxai.evaluate.predict import eval_mode, model_device

__all__ = ["box_region", "intervention_effect", "random_regions", "replace_region", "transplant_effect"]

METHODS = ("inpaint", "mean", "blur")
LEVEL = 0.95
_INTERVENTIONS = ("region", "control", "counterfactual")


# ------------------------------------------------------------------------------------- regions


def _as_region(region: Any, batch: int | None, hw: tuple[int, int] | None, name: str = "region") -> torch.Tensor:
    """Validate a bool region (B, 1, H, W) / (B, H, W) (B may be 1 and is broadcast) -> (B, 1, H, W)."""
    if not isinstance(region, torch.Tensor) or region.dtype != torch.bool:
        what = type(region).__name__ if not isinstance(region, torch.Tensor) else f"dtype {region.dtype}"
        raise InputError(f"{name} must be a bool tensor (B, 1, H, W) or (B, H, W), got {what}")
    r = region.unsqueeze(1) if region.ndim == 3 else region
    if r.ndim != 4 or r.shape[1] != 1:
        raise InputError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(region.shape)}")
    if hw is not None and tuple(r.shape[-2:]) != tuple(hw):
        raise InputError(f"{name} is {tuple(r.shape[-2:])} but the images are {tuple(hw)} (H, W)")
    if batch is not None:
        if r.shape[0] not in (1, batch):
            raise InputError(f"{name} has batch {r.shape[0]}, expected 1 or {batch}")
        r = r.expand(batch, -1, -1, -1)
    return r


def box_region(shape: tuple[int, int], box: tuple[float, float, float, float], n: int = 1) -> torch.Tensor:
    """A fixed rectangular region from a config, bool (n, 1, H, W).

    box = (top, left, height, width) as fractions of H and W; rows round(top * H) to
    round((top + height) * H) (exclusive, half up), columns likewise. An empty box is an error.
    """
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise InputError(f"shape must be (H, W) with positive sizes, got {shape!r}")
    if len(box) != 4 or any(not np.isfinite(float(b)) or float(b) < 0 for b in box):
        raise InputError(f"box must be 4 non-negative fractions (top, left, height, width), got {box!r}")
    top, left, bh, bw = (float(b) for b in box)
    if top + bh > 1 + 1e-9 or left + bw > 1 + 1e-9:
        raise InputError(f"box {box!r} reaches outside the image (top + height and left + width must be <= 1)")
    h, w = int(shape[0]), int(shape[1])
    r0, r1 = (min(h, int(np.floor(v * h + 0.5))) for v in (top, top + bh))
    c0, c1 = (min(w, int(np.floor(v * w + 0.5))) for v in (left, left + bw))
    if r1 <= r0 or c1 <= c0:
        raise InputError(f"box {box!r} covers no pixel of a {h}x{w} image")
    if int(n) < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    out = torch.zeros(int(n), 1, h, w, dtype=torch.bool)
    out[:, :, r0:r1, c0:c1] = True
    return out


def _placement(r: torch.Tensor, rng: np.random.Generator, avoid: bool) -> torch.Tensor:
    """One image's region (H, W) translated to a random inside position (see :func:`random_regions`)."""
    h, w = r.shape
    rows, cols = torch.nonzero(r.any(1)).flatten(), torch.nonzero(r.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    kernel = r[r0:r1, c0:c1]
    tops = torch.arange(h - (r1 - r0) + 1).view(-1, 1)
    lefts = torch.arange(w - (c1 - c0) + 1).view(1, -1)
    if avoid:
        bbox = torch.zeros(1, 1, h, w)
        bbox[..., r0:r1, c0:c1] = 1.0
        overlap = torch.nn.functional.conv2d(bbox, kernel[None, None].float())[0, 0]  # pixels landing in the bbox
        ok = overlap < 0.5
        if not bool(ok.any()):  # fallback: least overlap, then the farthest offset from the original
            dist = ((tops - r0) ** 2 + (lefts - c0) ** 2).float()
            least = overlap <= overlap.min() + 0.5
            ok = least & (dist >= dist[least].max())
    else:
        ok = torch.ones(tops.shape[0], lefts.shape[1], dtype=torch.bool)
    cand = torch.nonzero(ok)
    t, left = (int(v) for v in cand[int(rng.integers(cand.shape[0]))])
    out = torch.zeros(h, w, dtype=torch.bool)
    out[t:t + r1 - r0, left:left + c1 - c0] = kernel
    return out


def random_regions(region: torch.Tensor, *, seed: int = 0, avoid: bool = True) -> torch.Tensor:
    """Control regions: each image's region translated to a uniformly random position, bool (B, 1, H, W).

    region: bool (B, 1, H, W) or (B, H, W). The translated shape lies fully inside the image.
    avoid=True draws only among positions where no translated pixel falls inside the original
    region's bounding box; if there is none, it takes the position with the least such overlap
    and, among those, the farthest offset from the original (intervention_effect reports how many
    control regions still overlap the original). Empty regions stay empty. Seeded: one
    ``numpy.random.default_rng(seed)`` stream over the images in order.
    """
    r = _as_region(region, None, None).to("cpu")
    rng = np.random.default_rng(seed)
    out = torch.zeros_like(r)
    for i in range(r.shape[0]):
        if bool(r[i, 0].any()):
            out[i, 0] = _placement(r[i, 0], rng, avoid)
    return out.to(region.device)


# ---------------------------------------------------------------------------------- replacement


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W), replicate padding, radius ceil(3 sigma)."""
    rad = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-rad, rad + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    f = torch.nn.functional
    y = f.pad(img[None], (rad, rad, 0, 0), mode="replicate")
    y = f.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = f.pad(y, (0, 0, rad, rad), mode="replicate")
    y = f.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _blur_sigma(r: torch.Tensor) -> float:
    """sigma = max(1, largest bounding-box side of the region / 4) pixels."""
    rows, cols = torch.nonzero(r.any(1)), torch.nonzero(r.any(0))
    side = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    return max(1.0, side / 4.0)


def replace_region(x: torch.Tensor, region: torch.Tensor, method: str = "inpaint") -> torch.Tensor:
    """Replace the pixels of ``region`` in ``x``; (B, C, H, W) in [0, 1] -> a new (B, C, H, W) tensor.

    region: bool (B, 1, H, W) or (1|B, H, W), broadcast over channels (and batch if 1). method:

    - ``"inpaint"``: ``skimage.restoration.inpaint_biharmonic`` per image (all channels,
      ``channel_axis``), on the CPU in float64; biharmonic inpainting can overshoot [0, 1] slightly,
      so replaced pixels are clamped to [0, 1];
    - ``"mean"``: the mean of the image's pixels outside the region, per channel (a region
      covering the whole image is an error);
    - ``"blur"``: a Gaussian blur of the image (sigma = max(1, largest bounding-box side of the
      region / 4) px, per image) pasted inside the region. The blur still sees the region's
      pixels, so it weakens rather than removes a marker.

    Pixels outside the region are returned bitwise unchanged; the result is on x's device.
    """
    check_images(x)
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    r = _as_region(region, x.shape[0], tuple(x.shape[-2:])).to(x.device)
    if method == "mean":
        out_w = (~r).to(x.dtype)
        count = out_w.sum((2, 3))
        if bool((count == 0).any()):
            raise InputError("method 'mean': a region covers the whole image, nothing is left to average")
        fill = ((x * out_w).sum((2, 3)) / count)[..., None, None].expand_as(x)
    elif method == "blur":
        fill = x.clone()
        for i in range(x.shape[0]):
            if bool(r[i].any()):
                fill[i] = _gaussian_blur(x[i], _blur_sigma(r[i, 0]))
    else:
        from skimage.restoration import inpaint_biharmonic

        fill = x.clone()
        xc, rc = x.detach().cpu().double().numpy(), r[:, 0].cpu().numpy()
        for i in range(x.shape[0]):  # per image on the CPU (skimage), documented above
            if rc[i].any():
                filled = inpaint_biharmonic(np.moveaxis(xc[i], 0, -1), rc[i], channel_axis=-1)
                fill[i] = torch.from_numpy(np.moveaxis(filled, -1, 0).copy()).to(x.device, x.dtype)
    return torch.where(r, fill.clamp(0.0, 1.0), x)


# ------------------------------------------------------------------------------------ predictions


def _probs(model: nn.Module, x: torch.Tensor, batch_size: int, positive: int,
           logits: torch.Tensor | None = None) -> np.ndarray:
    """Softmax probabilities (N, K) as float64, batched, eval mode, no grad; from ``logits`` (N, K) of ``x``
    when the caller already has them (no forward)."""
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if logits is not None:
        return _softmax(check_logits(logits, x.shape[0]).detach(), positive)
    dev = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad():
        for s in range(0, x.shape[0], int(batch_size)):
            out.append(_softmax(model(x[s:s + int(batch_size)].to(dev)), positive))
    return np.concatenate(out)


def _softmax(logits: torch.Tensor, positive: int) -> np.ndarray:
    """Checked (N, K >= 2) logits -> float64 softmax probabilities as numpy."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"the model must return logits (B, K) with K >= 2, got {shape}")
    p = torch.softmax(logits.float(), dim=1).double().cpu().numpy()
    if not 0 <= positive < p.shape[1]:
        raise InputError(f"positive={positive} is out of range for {p.shape[1]} classes")
    return p


def _ci(reps: np.ndarray | None) -> list[float] | None:
    """Percentile interval of the finite replicates at LEVEL; None when there are none."""
    if reps is None:
        return None
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return None
    lo, hi = np.percentile(ok, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return [float(lo), float(hi)]


def _boot(n: int, n_boot: int, seed: int, stats: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Replicates of each ``stats[name](idx)`` over the same resampled images (idx (c, n))."""
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise InputError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if n_boot == 0:
        return None
    reps: dict[str, list[np.ndarray]] = {k: [] for k in stats}
    for idx in bootstrap_index_chunks(n, n_boot, seed):
        for k, fn in stats.items():
            reps[k].append(fn(idx))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in reps.items()}


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# -------------------------------------------------------------------------------- effect summaries


def _auc_part(p0: np.ndarray, p1: np.ndarray, y: np.ndarray | None, reps: dict[str, np.ndarray] | None,
              name: str) -> dict[str, Any]:
    if y is None:
        return {"auc_before": None, "auc_after": None, "auc_change": None, "auc_change_ci": None,
                "auc_reason": "no labels (y) given"}
    if y.all() or not y.any():
        return {"auc_before": None, "auc_after": None, "auc_change": None, "auc_change_ci": None,
                "auc_reason": f"AUC undefined: only one class present (all {'positive' if y.all() else 'negative'},"
                              f" n={y.size})"}
    from sklearn.metrics import roc_auc_score

    a0, a1 = float(roc_auc_score(y, p0)), float(roc_auc_score(y, p1))
    return {"auc_before": a0, "auc_after": a1, "auc_change": a1 - a0,
            "auc_change_ci": _ci(reps[f"{name}.auc_change"]) if reps is not None else None}


def _effect(p0: np.ndarray, p1: np.ndarray, positive: int, y: np.ndarray | None,
            reps: dict[str, np.ndarray] | None, name: str) -> dict[str, Any]:
    """Flip rates and the mean change of the positive-class probability for one intervention."""
    a0, a1 = p0.argmax(1), p1.argmax(1)
    pos = a0 == positive
    r = (lambda k: _ci(reps[f"{name}.{k}"])) if reps is not None else (lambda k: None)
    out: dict[str, Any] = {"flip_rate": float((a0 != a1).mean()), "flip_rate_ci": r("flip_rate"),
                           "n_predicted_positive": int(pos.sum())}
    if pos.any():
        out["positive_flip_rate"] = float((a1[pos] != positive).mean())
        out["positive_flip_rate_ci"] = r("positive_flip_rate")
    else:
        out.update(positive_flip_rate=None, positive_flip_rate_ci=None,
                   positive_flip_reason="no image is predicted positive before the intervention")
    dp = p1[:, positive] - p0[:, positive]
    out["mean_prob_change"], out["mean_prob_change_ci"] = float(dp.mean()), r("mean_prob_change")
    out.update(_auc_part(p0[:, positive], p1[:, positive], y, reps, name))
    return out


def _stat_fns(p0: np.ndarray, after: dict[str, np.ndarray], positive: int,
              y: np.ndarray | None) -> dict[str, Any]:
    """Bootstrap statistics (functions of the (c, n) index matrix) for every intervention and the difference."""
    a0 = p0.argmax(1)
    fns: dict[str, Any] = {}
    n = p0.shape[0]
    for name, p1 in after.items():
        a1 = p1.argmax(1)
        flip, pos = (a0 != a1).astype(float), (a0 == positive).astype(float)
        pflip = pos * (a1 != positive)
        dp = p1[:, positive] - p0[:, positive]
        fns[f"{name}.flip_rate"] = lambda idx, f=flip: f[idx].mean(1)
        fns[f"{name}.positive_flip_rate"] = lambda idx, a=pflip, b=pos: _rate(a[idx].sum(1), b[idx].sum(1))
        fns[f"{name}.mean_prob_change"] = lambda idx, d=dp: d[idx].mean(1)
        if y is not None and y.any() and not y.all():
            def auc_change(idx: np.ndarray, s1: np.ndarray = p1[:, positive]) -> np.ndarray:
                c = idx.shape[0]
                w = np.bincount((idx + n * np.arange(c)[:, None]).ravel(), minlength=c * n).reshape(c, n)
                return weighted_auc(s1, y, w) - weighted_auc(p0[:, positive], y, w)
            fns[f"{name}.auc_change"] = auc_change
    if "control" in after:
        for k in ("flip_rate", "mean_prob_change"):
            fns[f"difference.{k}"] = lambda idx, k=k: fns[f"region.{k}"](idx) - fns[f"control.{k}"](idx)
    return fns


def _difference(res: dict[str, Any], reps: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Region minus control (paired), with a one-sided bootstrap p-value for region flip rate > control's."""
    out: dict[str, Any] = {}
    for k in ("flip_rate", "mean_prob_change"):
        out[k] = res["region"][k] - res["control"][k]
        out[f"{k}_ci"] = _ci(reps[f"difference.{k}"]) if reps is not None else None
    if reps is None:
        out["p_value"] = None
    else:
        d = reps["difference.flip_rate"]
        out["p_value"] = float((1 + np.sum(d <= 0)) / (1 + d.size))
    out["p_value_test"] = "one-sided bootstrap: (1 + #{replicates with region - control flip rate <= 0}) / (1 + n_boot)"
    return out


def intervention_effect(model: nn.Module, x: torch.Tensor, region: torch.Tensor, y: Any = None, *,
                        positive: int = 1, method: str = "inpaint", control: bool = True,
                        counterfactual: torch.Tensor | None = None, n_boot: int = 1000, seed: int = 0,
                        batch_size: int = 64, clean_logits: torch.Tensor | None = None) -> dict[str, Any]:
    """Does ``model`` rely on ``region``? Remove it and compare with a random same-shape region elsewhere.

    x: (B, C, H, W) in [0, 1]; region: bool (B, 1, H, W) or (1|B, H, W) (e.g. the marker mask);
    y: optional (B,) class labels (AUC of ``positive`` vs rest); counterfactual: optional
    (B, C, H, W) images rendered without the shortcut. Images with an empty region are dropped
    (``n_excluded``). Interventions ``region`` (replace_region(x, region, method)), ``control``
    (the same on random_regions(region, seed=seed); ``control_overlapping`` counts fallbacks
    that still touch the region) and ``counterfactual``; each is None when not run, else a dict:
    flip_rate (share whose argmax changes), positive_flip_rate (share of predicted-positive images
    no longer predicted positive), mean_prob_change (mean p_after - p_before of ``positive``),
    auc_before / auc_after / auc_change (or None with ``auc_reason``), each with ``*_ci``: a paired
    95 % percentile bootstrap over the same resampled images (None when n_boot=0).
    ``difference``: region minus control for flip_rate and mean_prob_change, with a one-sided
    bootstrap p-value that region's flip rate exceeds control's. ``clean_logits``: (B, K) logits of ``x``
    when the caller has them (the audit's shared clean forward; no forward of ``x`` is run). Idea: Geirhos
    et al. 2020; DeGrave et al. 2021 (Nature Machine Intelligence).
    """
    check_images(x)
    r = _as_region(region, x.shape[0], tuple(x.shape[-2:])).to(x.device)
    keep = r.flatten(1).any(1)
    if not bool(keep.any()):
        raise InputError("every region is empty: no image has a shortcut region to intervene on")
    yk = None
    if y is not None:
        yt = torch.as_tensor(y).reshape(-1)
        if yt.numel() != x.shape[0] or yt.is_floating_point():
            raise InputError(f"y must hold {x.shape[0]} integer class labels, got shape {tuple(yt.shape)}")
        yk = (yt.cpu()[keep.cpu()] == positive).numpy()
    if counterfactual is not None:
        check_images(counterfactual, "counterfactual")
        if counterfactual.shape != x.shape:
            raise InputError(f"counterfactual must have x's shape {tuple(x.shape)}, got {tuple(counterfactual.shape)}")
        counterfactual = counterfactual[keep.to(counterfactual.device)]
    xk, rk = x[keep], r[keep]
    k0 = None if clean_logits is None else check_logits(clean_logits, x.shape[0])[keep.to(clean_logits.device)]
    p0 = _probs(model, xk, batch_size, positive, k0)
    after = {"region": _probs(model, replace_region(xk, rk, method), batch_size, positive)}
    overlapping = None
    if control:
        rc = random_regions(rk, seed=seed)
        overlapping = int((rc & rk).flatten(1).any(1).sum())
        after["control"] = _probs(model, replace_region(xk, rc, method), batch_size, positive)
    if counterfactual is not None:
        after["counterfactual"] = _probs(model, counterfactual, batch_size, positive)
    n = p0.shape[0]
    reps = _boot(n, n_boot, seed, _stat_fns(p0, after, positive, yk))
    res: dict[str, Any] = {"n": n, "n_excluded": int((~keep).sum()), "method": method, "positive": int(positive),
                           "n_boot": int(n_boot), "seed": int(seed), "ci_level": LEVEL,
                           "control_overlapping": overlapping}
    for name in _INTERVENTIONS:
        res[name] = _effect(p0, after[name], positive, yk, reps, name) if name in after else None
    res["difference"] = _difference(res, reps) if control else None
    return res


def transplant_effect(model: nn.Module, x_target: torch.Tensor, marker: torch.Tensor, marker_mask: torch.Tensor, *,
                      positive: int = 1, n_boot: int = 1000, seed: int = 0, batch_size: int = 64,
                      clean_logits: torch.Tensor | None = None) -> dict[str, Any]:
    """Paste a marker onto images (typically of the other class) and report how predictions move.

    x_target: (B, C, H, W) in [0, 1]; marker: (1|B, C, H, W) in [0, 1], whose pixels under
    marker_mask (bool (1|B, 1, H, W) or (1|B, H, W)) replace x_target's. Returns n, flip_rate
    (share whose argmax changes), to_positive_rate (share of images not predicted ``positive``
    before that are after; None if none), mean_prob_change (mean p_after - p_before of
    ``positive``), each with a 95 % percentile bootstrap ``*_ci`` (None when n_boot=0). The
    transplant direction of DeGrave et al. 2021; Geirhos et al. 2020. ``clean_logits``: (B, K) logits of
    ``x_target`` when the caller has them (no forward of ``x_target`` is run).
    """
    check_images(x_target, "x_target")
    check_images(marker, "marker")
    if marker.shape[0] not in (1, x_target.shape[0]) or marker.shape[1:] != x_target.shape[1:]:
        raise InputError(f"marker must be (1 or {x_target.shape[0]}, {', '.join(map(str, x_target.shape[1:]))}),"
                         f" got {tuple(marker.shape)}")
    m = _as_region(marker_mask, x_target.shape[0], tuple(x_target.shape[-2:]), "marker_mask").to(x_target.device)
    if not bool(m.any()):
        raise InputError("marker_mask is empty: there is nothing to transplant")
    pasted = torch.where(m, marker.to(x_target.device, x_target.dtype).expand_as(x_target), x_target)
    p0 = _probs(model, x_target, batch_size, positive, clean_logits)
    p1 = _probs(model, pasted, batch_size, positive)
    a0, a1 = p0.argmax(1), p1.argmax(1)
    flip, neg = (a0 != a1).astype(float), (a0 != positive).astype(float)
    topos = neg * (a1 == positive)
    dp = p1[:, positive] - p0[:, positive]
    fns = {"flip_rate": lambda idx: flip[idx].mean(1), "mean_prob_change": lambda idx: dp[idx].mean(1),
           "to_positive_rate": lambda idx: _rate(topos[idx].sum(1), neg[idx].sum(1))}
    reps = _boot(p0.shape[0], n_boot, seed, fns)
    ci = (lambda k: _ci(reps[k])) if reps is not None else (lambda k: None)
    return {"n": int(p0.shape[0]), "positive": int(positive), "n_boot": int(n_boot), "seed": int(seed),
            "ci_level": LEVEL, "flip_rate": float(flip.mean()), "flip_rate_ci": ci("flip_rate"),
            "to_positive_rate": float(topos.sum() / neg.sum()) if neg.any() else None,
            "to_positive_rate_ci": ci("to_positive_rate") if neg.any() else None,
            "mean_prob_change": float(dp.mean()), "mean_prob_change_ci": ci("mean_prob_change")}
