"""Explanation robustness metrics against Quantus 0.6.0 and captum 0.9.0, side by side in one process.

One model (small-cnn, 1 x S x S inputs in [0.25, 0.75]), one explainer (the input gradient of the
target logit, the same function on both sides), the same perturbation tensors injected on both
sides (medxai ``perturbations=``; Quantus a ``perturb_func`` returning them step by step; captum a
``perturb_func`` returning them), so the numbers must agree; the timings compare medxai's batched,
chunked explanation of all B x n perturbed images with Quantus' loop over perturbation steps and
captum's one batch per call. Rows: max- and average-sensitivity (Quantus, and captum
``sensitivity_max``), local Lipschitz estimate, RIS and ROS (Quantus), infidelity (captum,
``normalize=True``). Agreement: max relative difference of the per-sample scores.
Timings: warm-up, interleaved repeats, median; ratio = peer / medxai.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from benchmarks._harness import flop_fields, import_quantus, row, timeit_pair


def _grad(model, x, target):
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)[0]


def _setup(n: int, size: int, n_pert: int):
    from medxai.models import create

    torch.manual_seed(0)
    model = create("small-cnn", 3, in_chans=1).eval()
    g = torch.Generator().manual_seed(1)
    x = 0.25 + 0.5 * torch.rand(n, 1, size, size, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    uni = (torch.rand(n, n_pert, 1, size, size, generator=g, dtype=torch.float64) * 2 - 1) * 0.002
    gauss = 0.002 * torch.randn(n, n_pert, 1, size, size, generator=g, dtype=torch.float64)
    # infidelity compares f(x) - f(x - I) with I . Phi: larger I, so float32 logit rounding stays small
    big = 0.03 * torch.randn(n, n_pert, 1, size, size, generator=g, dtype=torch.float64)
    return model, x, y, uni, gauss, big


def _quantus_call(metric, model, x, y, a):
    def qexp(model, inputs, targets, **_):
        return _grad(model, torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                                 explain_func=qexp, device="cpu", batch_size=len(x)), dtype=np.float64)


def _inject(d):
    state = {"step": 0}

    def perturb(arr, indices, **_):
        out = arr + d[:, state["step"] % d.shape[1]].reshape(arr.shape[0], -1).numpy().astype(arr.dtype)
        state["step"] += 1
        return out

    return perturb


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def run(quick: bool = False) -> dict[str, Any]:
    from captum.metrics import infidelity as cap_infidelity
    from captum.metrics import sensitivity_max

    from medxai.metrics import robustness as R

    quantus = import_quantus()
    n, size, n_pert = (4, 16, 3) if quick else (32, 64, 10)
    repeats = 1 if quick else 3
    model, x, y, uni, gauss, big = _setup(n, size, n_pert)
    warm = 0 if quick else 1
    a = _grad(model, x, y)
    qkw = {"nr_samples": n_pert, "disable_warnings": True, "display_progressbar": False}
    ours = {
        "max_sensitivity": lambda: R.max_sensitivity(model, _grad, x, y, perturbations=uni),
        "avg_sensitivity": lambda: R.avg_sensitivity(model, _grad, x, y, perturbations=uni),
        "local_lipschitz_estimate": lambda: R.local_lipschitz_estimate(model, _grad, x, y, perturbations=gauss),
        "relative_input_stability": lambda: R.relative_input_stability(model, _grad, x, y, perturbations=uni),
        "relative_output_stability": lambda: R.relative_output_stability(model, _grad, x, y, perturbations=uni),
    }
    peers = {
        "max_sensitivity": lambda: quantus.MaxSensitivity(perturb_func=_inject(uni), normalise=False, **qkw),
        "avg_sensitivity": lambda: quantus.AvgSensitivity(perturb_func=_inject(uni), normalise=False, **qkw),
        "local_lipschitz_estimate": lambda: quantus.LocalLipschitzEstimate(perturb_func=_inject(gauss),
                                                                           normalise=False, **qkw),
        "relative_input_stability": lambda: quantus.RelativeInputStability(perturb_func=_inject(uni), **qkw),
        "relative_output_stability": lambda: quantus.RelativeOutputStability(perturb_func=_inject(uni), **qkw),
    }
    rows = []
    shape = f"{n} images 1x{size}x{size}, {n_pert} perturbations, small-cnn input gradient"
    for name, fn in ours.items():
        # the peer explains x in its timed call, as medxai does (a Quantus user computes a_batch first)
        peer = lambda name=name: _quantus_call(peers[name](), model, x, y, _grad(model, x, y))
        t = timeit_pair({"medxai": fn, "peer": peer}, repeats=repeats, warmup=warm)
        rows.append(row(f"{name}, {shape}", "Quantus 0.6.0", t["medxai"]["median_s"], t["peer"]["median_s"],
                        target=2.0, agreement=_rel(t["medxai"]["result"].numpy(), t["peer"]["result"]),
                        agreement_kind="max_rel_diff", tol=1e-3 if name == "relative_output_stability" else 1e-4,
                        images=n * n_pert,
                        miss_reason="the explainer's backward passes are the whole cost on both sides",
                        note="same perturbations injected on both sides; both explain x in the timed call" + (
                            "; tol 1e-3: the denominator ||h(x) - h(x')|| of nearly equal logits amplifies float32 "
                            "differences (the tests compare in float64 to 1e-5)" if name == "relative_output_stability"
                            else ""),
                        **flop_fields(model, fn, peer, x, backward=True)))

    def explain_fn(inp, target):
        return (_grad(model, inp[0], target),) if isinstance(inp, tuple) else _grad(model, inp, target)

    flat_u, flat_b = uni.flatten(0, 1).float(), big.flatten(0, 1).float()
    captum = {
        "max_sensitivity": (ours["max_sensitivity"], lambda: sensitivity_max(
            explain_fn, x, perturb_func=lambda inp, r: inp + flat_u, n_perturb_samples=n_pert, target=y)),
        "infidelity": (lambda: R.infidelity(model, x, a, y, perturbations=big), lambda: cap_infidelity(
            model, lambda inp: (flat_b, inp - flat_b), x, a, target=y, n_perturb_samples=n_pert, normalize=True)),
    }
    for name, (mine, peer) in captum.items():
        t = timeit_pair({"medxai": mine, "peer": peer}, repeats=repeats, warmup=warm)
        rows.append(row(f"{name}, {shape}", "captum 0.9.0", t["medxai"]["median_s"], t["peer"]["median_s"],
                        target=1.0, agreement=_rel(t["medxai"]["result"].numpy(), t["peer"]["result"].double().numpy()),
                        agreement_kind="max_rel_diff", tol=1e-4, images=n * n_pert,
                        miss_reason="captum also explains all perturbations in one batch",
                        note="same perturbations injected on both sides",
                        **flop_fields(model, mine, peer, x, backward=name != "infidelity")))
    return {"kind": "metrics_robustness", "rows": rows,
            "notes": "Quantus with normalise=False (its normalise_by_max is batch-global); RIS/ROS perturbations "
                     "small enough that no prediction changes (Quantus NaNs a sample otherwise)."}
