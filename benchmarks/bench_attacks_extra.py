"""Minimum-norm attacks and AutoAttack vs ART 1.20.1: DeepFool (L2), Carlini-Wagner L2 and the AutoAttack
ensemble (robust accuracy).

Same model (a seeded tiny CNN, K = 4 classes, eval mode; untrained, so the run needs no data and no
training, and its decisions are non-trivial on random images), same images, side by side in one process.
ART is driven through its public API (PyTorchClassifier with clip_values (0, 1)), numpy conversions
included. ART has no FAB and no targeted DLR, and its AutoAttack class needs the `multiprocess` package,
so its APGD-CE, APGD-DLR and Square are run in sequence on the still-robust images as its
AutoAttack.generate does (eps checked per image); medxai runs the standard ensemble (APGD-CE, APGD-T,
FAB-T, Square) with the same reduced iteration / query counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import bare_rate, count_flops, row, timeit_pair
from medxai.attacks.autoattack import AutoAttack
from medxai.attacks.minnorm import robustness_radius

KIND = "attacks_extra"
K = 4


def _setup(quick: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    size, n = (8, 6) if quick else (16, 32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, K)).eval()
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, size


def _art_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: np.ndarray) -> torch.Tensor:
    adv_t = torch.from_numpy(adv)
    with torch.no_grad():
        fooled = model(adv_t).argmax(1) != y
    r = (adv_t - x).flatten(1).norm(dim=1)
    return torch.where(fooled, r, torch.full_like(r, float("inf")))


def _compare_radii(ours: torch.Tensor, art: torch.Tensor) -> tuple[float, dict]:
    both = torch.isfinite(ours) & torch.isfinite(art)
    rel = float(((ours[both] - art[both]).abs() / art[both]).max()) if bool(both.any()) else float("nan")
    return rel, {"medxai_found": int(torch.isfinite(ours).sum()), "art_found": int(torch.isfinite(art).sum()),
                 "medxai_mean_radius": float(ours[both].mean()) if bool(both.any()) else float("nan"),
                 "art_mean_radius": float(art[both].mean()) if bool(both.any()) else float("nan")}


def _art_ensemble(clf, attacks, x: np.ndarray, y: np.ndarray, eps: float) -> float:
    robust = clf.predict(x).argmax(1) == y
    for atk in attacks:
        i = np.where(robust)[0]
        if not len(i):
            break
        adv = atk.generate(x[i], y[i])
        size = np.linalg.norm((adv - x[i]).reshape(len(i), -1), axis=1)
        robust[i[(clf.predict(adv).argmax(1) != y[i]) & (size <= eps * (1 + 1e-5))]] = False
    return float(robust.mean())


def _flops(fns: dict[str, Any], bare: float | None) -> dict[str, float | None]:
    """A row's FLOP keys: the model FLOPs of one untimed call per side, and the bare-pass rate."""
    return {"flops": count_flops(fns["medxai"]), "peer_flops": count_flops(fns["art"]), "bare_flops_per_s": bare}


def run(quick: bool = False) -> dict[str, Any]:
    from art.attacks.evasion import AutoProjectedGradientDescent, CarliniL2Method, DeepFool, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    model, x, y, size = _setup(quick)
    n = x.shape[0]
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, size, size), nb_classes=K,
                            clip_values=(0.0, 1.0))
    xn, yn = x.numpy(), y.numpy()
    reps = 1 if quick else 3
    rows = []
    bare = bare_rate(model, x, backward=True, repeats=reps)  # forward + backward of the batch, timed alone

    df_iter = 50
    fns = {"medxai": lambda: robustness_radius(model, x, y, "l2", "deepfool", max_iter=df_iter).radius,
           "art": lambda: DeepFool(clf, max_iter=df_iter, epsilon=0.02, nb_grads=10, batch_size=n,
                                   verbose=False).generate(xn)}
    t = timeit_pair(fns, repeats=reps, warmup=0 if quick else 1)
    rel, info = _compare_radii(t["medxai"]["result"], _art_radius(model, x, y, t["art"]["result"]))
    rows.append(row(f"DeepFool L2 radius, {n} images {size}px, tiny CNN K={K}", "ART DeepFool",
                    t["medxai"]["median_s"], t["art"]["median_s"], target=1.0, agreement=rel,
                    agreement_kind="max_rel_diff_radius", tol=1e-3, images=n,
                    note="overshoot 0.02 applied once after the loop on both sides; ART computes the class "
                         "gradients one class at a time through numpy", **info, **_flops(fns, bare)))

    steps, bs = (60, 4) if quick else (100, 5)
    fns = {"medxai": lambda: robustness_radius(model, x, y, "l2", "cw", steps=steps, binary_search_steps=bs,
                                               c_init=10.0).radius,
           "art": lambda: CarliniL2Method(clf, max_iter=steps, binary_search_steps=bs, initial_const=10.0,
                                          learning_rate=0.01, batch_size=n, verbose=False).generate(xn)}
    t = timeit_pair(fns, repeats=reps, warmup=0)
    ours, art = t["medxai"]["result"], _art_radius(model, x, y, t["art"]["result"])
    _, info = _compare_radii(ours, art)
    both = torch.isfinite(ours) & torch.isfinite(art)
    ratio = float((ours[both] / art[both]).mean()) if bool(both.any()) else float("nan")
    rows.append(row(f"CW-L2 radius, {steps} steps x {bs} constants, {n} images {size}px", "ART CarliniL2Method",
                    t["medxai"]["median_s"], t["art"]["median_s"], target=1.0, agreement=abs(ratio - 1),
                    agreement_kind="abs(mean radius ratio - 1)", tol=0.3, images=n, mean_radius_ratio=ratio,
                    note="same objective, Adam on medxai's side; ART line-searches its own steps, so radii differ "
                         "(ratio < 1: medxai's examples are smaller)", **info, **_flops(fns, bare)))

    eps, aa_steps, queries = 0.3 if quick else 0.5, (5 if quick else 50), (50 if quick else 1000)
    art_atks = [AutoProjectedGradientDescent(clf, norm=2, eps=eps, eps_step=2 * eps, max_iter=aa_steps,
                                             nb_random_init=1, batch_size=n, loss_type=loss, verbose=False)
                for loss in ("cross_entropy", "difference_logits_ratio")]
    art_atks.append(SquareAttack(clf, norm=2, eps=eps, max_iter=queries, p_init=0.8, nb_restarts=1, verbose=False))
    fns = {"medxai": lambda: AutoAttack(model, eps, "l2", steps=aa_steps, n_queries=queries).run(x, y),
           "art": lambda: _art_ensemble(clf, art_atks, xn, yn, eps)}
    t = timeit_pair(fns, repeats=1, warmup=0)
    res, ra_art = t["medxai"]["result"], t["art"]["result"]
    rows.append(row(f"AutoAttack L2 eps {eps}, {aa_steps} steps / {queries} queries, {n} images", "ART APGD-CE, "
                    "APGD-DLR, Square composed", t["medxai"]["median_s"], t["art"]["median_s"],
                    agreement=abs(res.robust_accuracy - ra_art), agreement_kind="abs_diff_robust_accuracy",
                    tol=2 / n, images=n, medxai_robust_accuracy=res.robust_accuracy, art_robust_accuracy=ra_art,
                    medxai_after=res.robust_accuracy_after,
                    note="different ensembles (ART lacks FAB-T and the targeted DLR; medxai's runs APGD-T and "
                         "FAB-T instead of APGD-DLR), so the time is for different work; agreement within two "
                         "images", **_flops(fns, bare)))
    return {"kind": KIND, "rows": rows}
