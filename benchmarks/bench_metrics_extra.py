"""The issue-18 metrics against Quantus 0.6.0, side by side in one process, on shared inputs.

Faithfulness correlation, monotonicity correlation, IROF, selectivity, sufficiency; random
logit, efficient MPRT, smooth MPRT, Focus. Quantus' random draws (subsets, uniform fills, the
other class) are replayed from its global numpy seed and injected into medxai, so both sides
score the same perturbations; Quantus runs with ``normalise=False`` (its normalisation is
batch-global). Where Quantus departs from the paper (IROF's batch-wide running-mean fill and
unnormalised area, random logit's SSIM of flattened maps, sMPRT's fresh noise per call) the
row compares the shared part: IROF with baseline 0 and Quantus' area recomputed from medxai's
curve, random logit with a 2-D SSIM given to Quantus, sMPRT with noise 0. The MPRT rows use a
one-layer model so that both sides' randomisation seeds coincide.
Timings: warm-up, interleaved repeats, median; ratio = peer / medxai. Agreement: max |diff|.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import flop_fields, import_quantus, row, timeit_pair


def _images(n: int, size: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size, size, generator=g), 3, 1, 1)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)  # an exact 0 per image: Quantus' "black"


def _maps(n: int, size: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size, size, generator=g), 5, 1, 2)
    return (a + 1e-3 * torch.randn(n, 1, size, size, generator=g))[:, 0]


def _cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, classes)).eval()
    with torch.no_grad():
        m[-1].weight.mul_(10.0)
    return m


def _one_layer() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 5, padding=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        m[0].weight.mul_(4.0)
    return m


def _grad(model, x, t):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)[0]


def _q_grad(model, inputs, targets, **kw):
    return _grad(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()).numpy()


def _call(metric, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(device="cpu", **kw)


def _diff(a, b) -> float:
    a = np.asarray(a.detach().double().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    d = np.abs(a - np.asarray(b, dtype=np.float64))
    return float(np.nanmax(d)) if np.isfinite(d).any() else 0.0


def _pair(work, ours, peer, repeats, n, compare, note="", flops_on=None, tol=1e-5):
    """One row; ``flops_on`` = (model, batch it is fed, backward): add the FLOP keys (both sides run the model)."""
    t = timeit_pair({"medxai": ours, "quantus": peer}, repeats=repeats)
    fl = flop_fields(flops_on[0], ours, peer, flops_on[1], backward=flops_on[2]) if flops_on else {}
    return row(work, "Quantus 0.6.0", t["medxai"]["median_s"], t["quantus"]["median_s"],
               agreement=compare(t["medxai"]["result"], t["quantus"]["result"]), tol=tol, images=n, note=note, **fl)


def _faithfulness(quick: bool, repeats: int) -> list[dict[str, Any]]:
    quantus = import_quantus()
    from medxai.metrics import faithfulness_extra as FX

    n, size = (4, 12) if quick else (32, 32)
    hw = size * size
    x, a = _images(n, size), _maps(n, size)
    model = _cnn()
    y = torch.arange(n) % 3
    kw = {"model": model, "x_batch": x.numpy(), "y_batch": y.numpy(), "a_batch": a[:, None].numpy()}
    off = {"normalise": False, "abs": False, "disable_warnings": True}
    rows = []

    runs, k = (8, 16) if quick else (50, 64)
    np.random.seed(0)  # noqa: NPY002 - replays Quantus' global RNG
    idx = np.zeros((n, runs, k), np.int64)
    for r in range(runs):
        for i in range(n):
            idx[i, r] = np.random.choice(hw, k, replace=False)  # noqa: NPY002
        np.random.uniform(size=n)  # noqa: NPY002 - Quantus' unused 'uniform' fill
    sub = torch.from_numpy(idx)
    fwd = (model, x, False)  # perturbed forwards (the batch fed is measured)

    def q_fc():
        np.random.seed(0)  # noqa: NPY002
        return _call(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=k, return_aggregate=False, **off), **kw)

    rows.append(_pair(f"faithfulness correlation, {n} maps {size}x{size}, {runs} runs of {k} px",
                      lambda: FX.faithfulness_correlation(model, x, a, y, subsets=sub), q_fc, repeats, n, _diff,
                      flops_on=fwd))

    fis, ns = (16, 3) if quick else (16, 10)
    np.random.seed(0)  # noqa: NPY002
    vals = np.zeros((n, hw // fis, ns))
    for g in range(hw // fis):
        for j in range(ns):
            vals[:, g, j] = np.random.uniform(0, 1, size=n)  # noqa: NPY002
    v = torch.from_numpy(vals).float()

    def q_mc():
        np.random.seed(0)  # noqa: NPY002
        return _call(quantus.MonotonicityCorrelation(nr_samples=ns, features_in_step=fis, **off), **kw)

    rows.append(_pair(f"monotonicity correlation, {n} maps {size}x{size}, {hw // fis} groups x {ns}",
                      lambda: FX.monotonicity_correlation(model, x, a, y, features_in_step=fis, nr_samples=ns,
                                                          values=v), q_mc, repeats, n, _diff, flops_on=fwd))

    seg = FX.slic_segments(x)
    counts = [len(torch.unique(s)) for s in seg]

    def irof_vs_quantus(res, q):  # Quantus' area N - trapz(curve[1:]) from medxai's curve
        c = res.curve.numpy()
        return _diff(np.array([counts[i] - np.trapezoid(c[i, 1 : counts[i] + 1]) for i in range(n)]), q)

    rows.append(_pair(f"IROF (SLIC), {n} images {size}x{size}, baseline 0",
                      lambda: FX.irof(model, x, a, y, baseline=0.0),
                      lambda: _call(quantus.IROF(perturb_baseline=0.0, return_aggregate=False, **off), **kw),
                      repeats, n, irof_vs_quantus, flops_on=fwd, tol=1e-4,
                      note="medxai's score is the normalised AOC of the paper; tol 1e-4: the curves are float32 "
                           "softmax outputs summed over up to 40 segments (4.8e-5 apart at quick size)"))
    rows.append(_pair(f"selectivity, {n} images {size}x{size}, 4 px patches",
                      lambda: FX.selectivity(model, x, a, y, patch_size=4),
                      lambda: _call(quantus.Selectivity(patch_size=4, **off), **kw), repeats, n,
                      lambda r, q: _diff(r.curve[:, 1:], q), flops_on=fwd))
    with torch.no_grad():
        pred = model(x).argmax(1)
    kws = dict(kw, y_batch=pred.numpy())
    rows.append(_pair(f"sufficiency, {n} maps {size}x{size}", lambda: FX.sufficiency(a, pred, threshold=0.9),
                      lambda: _call(quantus.Sufficiency(threshold=0.9, normalise=False, abs=True,
                                                        disable_warnings=True), **kws),
                      repeats, n, lambda r, q: _diff(torch.nan_to_num(r, nan=0.0), q),
                      note="medxai NaN (no neighbour) compared as Quantus' 0"))
    return rows


def _randomisation(quick: bool, repeats: int) -> list[dict[str, Any]]:
    quantus = import_quantus()
    from skimage.metrics import structural_similarity

    from medxai._util.seed import derive_seed
    from medxai.metrics import randomisation_extra as RX

    n, size = (4, 12) if quick else (32, 32)
    x = _images(n, size)
    rows = []
    model = _cnn(4)
    y = torch.arange(n) % 4
    np.random.seed(42)  # noqa: NPY002 - Quantus' draw of the other class, replayed
    classes = np.stack([np.arange(4)] * n)
    keep = np.ones_like(classes)
    keep[np.arange(n)[None, :], y.numpy()] = 0
    other = classes[keep.astype(bool)].reshape(n, -1)[np.arange(n)[None, :],
                                                      np.random.randint(0, 3, n)].flatten()  # noqa: NPY002
    a = _grad(model, x, y)

    def ssim2d(p, q, batched=True, **kw):
        out = []
        for pp, qq in zip(p, q, strict=True):
            pp, qq = np.abs(pp.reshape(size, size)), np.abs(qq.reshape(size, size))
            pp, qq = (pp - pp.min()) / np.ptp(pp), (qq - qq.min()) / np.ptp(qq)
            out.append(structural_similarity(pp, qq, data_range=1.0))
        return np.array(out)

    rows.append(_pair(f"random logit (gradient, 2-D SSIM), {n} images {size}x{size}",
                      lambda: RX.random_logit(model, _grad, x, y, other=torch.from_numpy(other), maps=a),
                      lambda: _call(quantus.RandomLogit(num_classes=4, seed=42, similarity_func=ssim2d, normalise=False,
                                                        abs=False, disable_warnings=True), model=model,
                                    x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), explain_func=_q_grad),
                      repeats, n, _diff, flops_on=(model, x, True)))
    one = _one_layer()
    y3 = torch.arange(n) % 3
    qseed = derive_seed(0, "randomise", "0") % 2**63 - 1
    common = {"model": one, "x_batch": x.numpy(), "y_batch": y3.numpy(), "a_batch": None, "explain_func": _q_grad}
    rows.append(_pair(f"efficient MPRT (gradient), {n} images {size}x{size}",
                      lambda: RX.efficient_mprt(one, _grad, x, y3).score,
                      lambda: _call(quantus.EfficientMPRT(seed=qseed, disable_warnings=True), **common),
                      repeats, n, _diff, note="one-layer model: both sides' randomisation seeds coincide",
                      flops_on=(one, x, True)))
    ns = 3 if quick else 10
    rows.append(_pair(f"smooth MPRT (gradient, noise 0), {n} images {size}x{size}, {ns} copies",
                      lambda: RX.smooth_mprt(one, _grad, x, y3, nr_samples=ns, noise_magnitude=0.0).spearman_abs[-1],
                      lambda: _call(quantus.SmoothMPRT(seed=qseed, nr_samples=ns, noise_magnitude=0.0,
                                                       return_last_correlation=True, disable_warnings=True),
                                    explain_func_kwargs={"method": "Gradient"}, **common),
                      repeats, n, _diff, flops_on=(one, x, True)))
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(n, 2 * size, 2 * size, generator=g)
    quads = torch.rand(n, 4, generator=g) < 0.5
    rows.append(_pair(f"focus, {n} mosaic maps {2 * size}x{2 * size}", lambda: RX.focus(maps, quads),
                      lambda: _call(quantus.Focus(normalise=False, abs=False, disable_warnings=True), model=model,
                                    x_batch=torch.rand(n, 1, 2 * size, 2 * size, generator=g).numpy(),
                                    y_batch=np.zeros(n, int), a_batch=maps[:, None].numpy(),
                                    custom_batch=quads.int().numpy()),
                      repeats, n, _diff))
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 3
    rows = _faithfulness(quick, repeats) + _randomisation(quick, repeats)
    return {"kind": "metrics_extra", "rows": rows,
            "notes": "Quantus' random draws replayed and injected into medxai; Quantus normalise=False. Paper "
                     "departures of Quantus (IROF fill and area, random logit's flattened SSIM) are in the tests."}
