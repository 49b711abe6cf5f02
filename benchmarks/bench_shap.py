"""SHAP-family explanations and NoiseTunnel against captum, side by side in one process.

- KernelSHAP, the same grid feature mask and the same number of model evaluations: medxai
  ``KernelShap`` (exact enumeration when 2^M - 2 <= n_samples, else paired kernel sampling; one
  engine pass) vs captum ``KernelShap`` (perturbations_per_eval 64). Agreement: captum samples
  coalitions with replacement (endpoints weighted 1e6), so its values only approach the Shapley
  values: the row reports max |difference| / max |phi| on the benchmark model (no tolerance) and,
  with a tolerance, the max difference on a linear model, where both regressions are exact.
- GradientSHAP, n draws from a baseline distribution: timed with each side's own draws; agreement:
  medxai's deterministic core fed captum's replayed draws (numpy / torch global generators).
- NoiseTunnel(IG), smoothgrad over n noisy copies, Gauss-Legendre IG: agreement with the same
  noise tensor given to medxai.
Quick: small-cnn (width 8) at 32 px, batch 2; full: resnet18 at 96 px, batch 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import flop_fields, row, timeit_pair

KIND = "shap"


def _model(quick: bool, num_classes: int = 3) -> tuple[nn.Module, str]:
    from medxai.models import create

    torch.manual_seed(0)
    if quick:
        return create("small-cnn", num_classes, width=8).eval(), "small-cnn"
    return create("resnet18", num_classes).eval(), "resnet18"


def _image(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _grid(size: int, cells: int) -> torch.Tensor:
    r = torch.arange(size)[:, None] * cells // size
    return (r * cells + r.T).long()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max())


class _Linear(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3 * size * size, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def _kernel_shap(quick: bool) -> dict[str, Any]:
    from captum.attr import KernelShap as CaptumKernelShap

    from medxai.explain import KernelShap

    model, net = _model(quick)
    size, cells, n = (32, 3, 256) if quick else (96, 4, 512)
    x, feats = _image(1, size), _grid(size, cells)
    m = cells * cells
    ours = KernelShap(model, n_samples=n - 2)
    cap = CaptumKernelShap(model)

    def run_captum(mdl=model, xx=x) -> torch.Tensor:
        torch.manual_seed(0)
        return cap.attribute(xx, target=1, feature_mask=feats[None, None], n_samples=n, perturbations_per_eval=64,
                             baselines=0.0)

    res = timeit_pair({"medxai": lambda: ours.attribute(x, 1, feature_mask=feats), "captum": run_captum},
                      repeats=1 if quick else 3, warmup=1)
    fl = flop_fields(model, lambda: ours.attribute(x, 1, feature_mask=feats), run_captum, x)
    rel = _rel(res["medxai"]["result"], res["captum"]["result"][:, :1])
    lin = _Linear(size)
    lin_c = CaptumKernelShap(lin).attribute(x, target=1, feature_mask=feats[None, None], n_samples=n,
                                            perturbations_per_eval=64)
    lin_o = KernelShap(lin, n_samples=n - 2).attribute(x, 1, feature_mask=feats)
    lin_diff = float((lin_o - lin_c[:, :1]).abs().max() / lin_o.abs().max())
    exact = 2**m - 2 <= n - 2
    return row(f"KernelSHAP {m} features, {n} evaluations, {size} px, {net}", "captum KernelShap (ppe 64)",
               res["medxai"]["median_s"], res["captum"]["median_s"], agreement=lin_diff,
               agreement_kind="max |diff| / max |phi|, linear model (both exact)", tol=1e-4, images=1,
               cnn_rel_diff=rel, medxai_exact=exact, times_s={k: v["times_s"] for k, v in res.items()}, **fl,
               note="cnn_rel_diff: captum's sampled estimate vs medxai's "
                    + ("exact Shapley values" if exact else "paired-sampling estimate"))


def _captum_draws(b: int, n: int, s: int, stdev: float, shape: tuple, seed: int):
    """captum GradientShap's draws replayed: np.random.choice, torch.normal (float32), np.random.uniform."""
    np.random.seed(seed)  # noqa: NPY002 - captum draws from numpy's global generator
    torch.manual_seed(seed)
    idx = torch.tensor(np.random.choice(s, n * b)).view(b, n).T  # noqa: NPY002
    noise = torch.normal(0, torch.tensor(stdev).repeat((b * n, *shape))).view(b, n, *shape).transpose(0, 1)
    alpha = torch.tensor(np.random.uniform(0.0, 1.0, b * n), dtype=torch.float32).view(b, n).T  # noqa: NPY002
    return idx, alpha, noise


def _gradient_shap(quick: bool) -> dict[str, Any]:
    from captum.attr import GradientShap as CaptumGradientShap

    from medxai.explain import GradientShap, gradient_shap_from_draws

    model, net = _model(quick)
    size, b, n, s, sd = (32, 2, 8, 4, 0.05) if quick else (96, 2, 50, 16, 0.05)
    x, pool = _image(b, size), _image(s, size, seed=3)
    t = torch.tensor([0, 2])
    ours = GradientShap(model, n_samples=n, stdev=sd)
    cap = CaptumGradientShap(model)

    def run_captum() -> torch.Tensor:
        np.random.seed(1)  # noqa: NPY002
        torch.manual_seed(1)
        return cap.attribute(x, pool, n_samples=n, stdevs=sd, target=t)

    res = timeit_pair({"medxai": lambda: ours.attribute(x, t, baseline=pool), "captum": run_captum},
                      repeats=1 if quick else 3, warmup=1)
    fl = flop_fields(model, lambda: ours.attribute(x, t, baseline=pool), run_captum, x, backward=True)
    idx, alpha, noise = _captum_draws(b, n, s, sd, tuple(x.shape[1:]), 1)
    core = gradient_shap_from_draws(model, x, t[:, None], pool[:, None], idx, alpha, noise, chunk=64)[:, 0]
    return row(f"GradientSHAP {n} draws, {s} baselines, {size} px, {net}, batch {b}", "captum GradientShap",
               res["medxai"]["median_s"], res["captum"]["median_s"], agreement=_rel(core, res["captum"]["result"]),
               agreement_kind="max |diff| / max |attr| under captum's replayed draws", tol=1e-5, images=b,
               model_evals=b * n, times_s={k: v["times_s"] for k, v in res.items()}, **fl,
               note="timed with each side's own draws; agreement with the same draws")


def _noise_tunnel(quick: bool) -> dict[str, Any]:
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import NoiseTunnel as CaptumNT

    from medxai.explain import NoiseTunnel

    model, net = _model(quick)
    size, b, n, steps, sd = (32, 2, 4, 8, 0.1) if quick else (96, 2, 10, 16, 0.1)
    x = _image(b, size)
    t = torch.tensor([1, 2])
    torch.manual_seed(2)
    noise = torch.normal(0, torch.tensor(sd).repeat((b * n, *x.shape[1:]))).view(b, n, *x.shape[1:]).transpose(0, 1)
    ours = NoiseTunnel(model, "ig", stdev=sd, n_samples=n, method_kw={"n_steps": steps})
    cap = CaptumNT(CaptumIG(model))

    def run_captum() -> torch.Tensor:
        torch.manual_seed(2)
        return cap.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=sd, target=t, n_steps=steps,
                             method="gausslegendre")

    res = timeit_pair({"medxai": lambda: ours.attribute(x, t, noise=noise), "captum": run_captum},
                      repeats=1 if quick else 3, warmup=1)
    fl = flop_fields(model, lambda: ours.attribute(x, t, noise=noise), run_captum, x, backward=True)
    return row(f"NoiseTunnel(IG {steps} steps) smoothgrad, {n} copies, {size} px, {net}, batch {b}",
               "captum NoiseTunnel(IntegratedGradients)", res["medxai"]["median_s"], res["captum"]["median_s"],
               agreement=_rel(res["medxai"]["result"], res["captum"]["result"]),
               agreement_kind="max |diff| / max |attr|, same noise", tol=1e-5, images=b,
               model_evals=b * n * steps, times_s={k: v["times_s"] for k, v in res.items()}, **fl,
               note="the same noise tensor on both sides")


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    return {"kind": KIND, "rows": [_kernel_shap(quick), _gradient_shap(quick), _noise_tunnel(quick)]}


if __name__ == "__main__":
    import json

    out = run(quick=True)
    for r in out["rows"]:
        r.pop("times_s", None)
    print(json.dumps(out, indent=1))
