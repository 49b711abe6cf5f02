"""Gradient explanations vs captum and MONAI: IG, Grad-CAM (per-sample targets, 5 labels), SmoothGrad.

Same model (the zoo's resnet18, random init, eval mode), same inputs and settings, run side by
side in one process (interleaved, warm-up, repeats, median). Peak memory: the rise of the
process's peak RSS during one call (``/proc/self/clear_refs`` reset; CPU) or
``torch.cuda.max_memory_allocated`` (GPU). Sizes: the issue's where the shared 2-core machine
allows (IG at 128 px with batch 2 instead of 8, Grad-CAM at 96 px instead of 224; each row says).
FLOPs: FlopCounterMode's count of one untimed call per side; bare rate: the model's forward + input
backward alone at the batch medxai feeds it (its chunk).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from benchmarks._harness import count_flops, flop_fields, peak_mb, row, sync, timeit_pair
from medxai.explain import GradCAM, IntegratedGradients, SmoothGrad

KIND = "explain_gradient"


def _model(num_classes: int, quick: bool = False) -> tuple[nn.Module, str]:
    if quick:  # the harness check: a tiny network
        from medxai.models import create

        torch.manual_seed(0)
        m = create("small-cnn", num_classes=num_classes, width=8)
        m.default_cam_layer = "features.block3"
        return m.eval(), "medxai.models small-cnn (width 8)"
    torch.manual_seed(0)  # the same random init whichever benchmarks ran before in this process
    try:
        from medxai.models import create

        m = create("resnet18", num_classes=num_classes)
        src = "medxai.models resnet18"
    except Exception:  # the zoo is not there: MONAI's resnet18 directly
        from monai.networks.nets import resnet18

        m = resnet18(spatial_dims=2, n_input_channels=3, num_classes=num_classes)
        m.default_cam_layer = "layer4"
        src = "monai resnet18"
    torch.manual_seed(0)
    return m.eval(), src


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    sync()


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _timed(fns: dict, repeats: int) -> dict:
    def wrap(f):
        def g():
            out = f()
            _sync()
            return out
        return g
    return timeit_pair({k: wrap(f) for k, f in fns.items()}, repeats=repeats, warmup=1)


def bench_ig(model: nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int, repeats: int,
             captum_batches: list[int]) -> list[dict[str, Any]]:
    from captum.attr import IntegratedGradients as CaptumIG

    ours = IntegratedGradients(model, n_steps=steps)
    cig = CaptumIG(model)
    b = x.shape[0]
    # tune captum's internal_batch_size: fastest of the candidates, one run each (also its warm-up)
    best, best_s = None, float("inf")
    for ibs in captum_batches:
        t0 = time.perf_counter()
        cig.attribute(x, target=t, n_steps=steps, internal_batch_size=ibs)
        _sync()
        dt = time.perf_counter() - t0
        if dt < best_s:
            best, best_s = ibs, dt
    res = _timed({"medxai": lambda: ours.attribute(x, t),
                  "captum": lambda: cig.attribute(x, target=t, n_steps=steps, internal_batch_size=best)}, repeats)
    a_ours, a_cap = res["medxai"]["result"], res["captum"]["result"]
    diff = _maxdiff(a_ours, a_cap)
    scale = float(a_cap.abs().max())
    mem_ours = peak_mb(lambda: ours.attribute(x, t))
    mem_captum = peak_mb(lambda: cig.attribute(x, target=t, n_steps=steps, internal_batch_size=best))
    chunk = ours._chunk(model, x)
    fl = flop_fields(model, lambda: ours.attribute(x, t),
                     lambda: cig.attribute(x, target=t, n_steps=steps, internal_batch_size=best), x,
                     backward=True, repeats=repeats + 1)
    work = f"IG {steps} steps (Gauss-Legendre), resnet18 {x.shape[-1]} px, batch {b}"
    rows = [row(work, "captum IntegratedGradients", res["medxai"]["median_s"], res["captum"]["median_s"],
                target=1.0, agreement=diff, tol=1e-5, images=b, **fl,
                note=f"captum internal_batch_size={best} (fastest of {captum_batches}); medxai chunk={chunk} "
                     f"images from its 1 GiB budget; max |captum map| {scale:.3g}; batch {b} instead of 8 "
                     "to fit the shared 2-core machine",
                miss_reason="the model's forward and backward are the whole cost on both sides (parity is "
                            "the physical limit); the gap is within the run-to-run noise of the shared machine",
                device=str(x.device))]
    mem_ratio = (mem_captum / mem_ours) if (mem_ours and mem_captum) else None
    rows.append(row(f"{work}: peak memory", "captum IntegratedGradients", None, None, target=1.0,
                    target_on="memory_ratio", peak_mb_medxai=mem_ours, peak_mb_peer=mem_captum,
                    memory_ratio=mem_ratio,
                    note="memory_ratio = captum peak / medxai peak (>= 1: medxai uses no more); peak-RSS rise "
                         "of one call",
                    miss_reason="medxai's 1 GiB autograd budget picks a larger chunk than captum's tuned "
                                "internal_batch_size; with internal_batch_size set equal the peaks match"))
    return rows


def bench_ig_adaptive(model: nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int) -> list[dict[str, Any]]:
    """Adaptive IG to the fixed run's worst relative completeness error, evaluations counted."""
    fixed = IntegratedGradients(model, n_steps=steps)
    t0 = time.perf_counter()
    _, d_fixed = fixed.attribute(x, t, return_convergence_delta=True)
    _sync()
    t_fixed = time.perf_counter() - t0
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    rel_fixed = (d_fixed[:, 0].abs() / gap.abs()).max().item() if d_fixed.ndim > 1 else \
        (d_fixed.abs() / gap.abs()).max().item()
    ada = IntegratedGradients(model, adaptive=True, tol=rel_fixed, atol=0.0, start_steps=4, max_steps=4 * steps)
    t0 = time.perf_counter()
    _, d_ada = ada.attribute(x, t, return_convergence_delta=True)
    _sync()
    t_ada = time.perf_counter() - t0
    d_ada = d_ada.reshape(gap.shape[0], -1)[:, 0]
    evals = ada.n_evaluations_.float()
    fl = flop_fields(model, lambda: ada.attribute(x, t), lambda: fixed.attribute(x, t), x, backward=True, repeats=2)
    return [row(f"IG adaptive (GL, doubling from 4) to the fixed n={steps} run's worst relative completeness "
                f"error {rel_fixed:.2g}, resnet18 {x.shape[-1]} px, batch {x.shape[0]}",
                f"medxai IG fixed n={steps}", t_ada, t_fixed, target=2.0,
                target_on="evaluations_ratio", agreement=(d_ada.abs() / gap.abs()).max().item(),
                agreement_kind="max relative completeness error", tol=rel_fixed * (1 + 1e-6),
                note=f"evaluations per sample (all rounds): {[int(v) for v in evals.tolist()]}; one call each timed",
                miss_reason="the worst samples' integrands need the full step count (and the doubling rounds "
                            "below it) to reach the fixed run's worst error",
                evaluations_mean=float(evals.mean()), evaluations_fixed=steps,
                evaluations_ratio=steps / float(evals.mean()), **fl)]


def bench_gradcam(model: nn.Module, x: torch.Tensor, t: torch.Tensor, layer: str, repeats: int) -> list[dict]:
    from captum.attr import LayerGradCam
    from monai.visualize import GradCAM as MonaiGradCAM

    ours = GradCAM(model, layer=layer, upsample=False)
    cap = LayerGradCam(model, model.get_submodule(layer))
    # MONAI leaves its hooks (and parameter gradients) on the model: give it its own copy
    mon = MonaiGradCAM(nn_module=copy.deepcopy(model), target_layers=layer)

    def monai_one_by_one():
        return torch.cat([mon(x[i:i + 1], class_idx=int(t[i])) for i in range(x.shape[0])])

    res = _timed({"medxai": lambda: ours.attribute(x, t),
                  "captum": lambda: cap.attribute(x, target=t, relu_attributions=True),
                  "monai": monai_one_by_one}, repeats)
    raw_monai = torch.cat([mon.compute_map(x[i:i + 1], class_idx=int(t[i]), layer_idx=-1) for i in range(4)])
    ours_raw = res["medxai"]["result"]
    fl_cap = flop_fields(model, lambda: ours.attribute(x, t),
                         lambda: cap.attribute(x, target=t, relu_attributions=True), x, backward=True,
                         repeats=repeats + 1)
    fl_mon = dict(fl_cap, peer_flops=count_flops(monai_one_by_one))
    work = f"Grad-CAM {layer}, resnet18 {x.shape[-1]} px, batch {x.shape[0]}, per-sample targets"
    why = ("one forward and one backward to the layer on both sides: parity is the physical limit and the "
           "gap is within the shared machine's noise")
    return [
        row(work, "captum LayerGradCam(relu_attributions=True)", res["medxai"]["median_s"], res["captum"]["median_s"],
            target=1.0, agreement=_maxdiff(ours_raw, res["captum"]["result"]), tol=1e-5, images=x.shape[0],
            note="both raw maps at layer resolution", miss_reason=why, device=str(x.device), **fl_cap),
        row(work, "MONAI GradCAM one image at a time", res["medxai"]["median_s"], res["monai"]["median_s"],
            target=2.0, agreement=_maxdiff(ours_raw[:4], torch.as_tensor(raw_monai)), tol=1e-5, images=x.shape[0],
            note="MONAI __call__ (upsampled, 1 - minmax); agreement: its raw compute_map on 4 images",
            miss_reason="batching buys little on 2 CPU cores: a batch-1 resnet18 already fills both cores",
            device=str(x.device), **fl_mon),
    ]


def bench_multilabel(model: nn.Module, x: torch.Tensor, layer: str, repeats: int) -> list[dict]:
    from captum.attr import LayerGradCam

    k = 5
    ours = GradCAM(model, layer=layer, upsample=False)
    cap = LayerGradCam(model, model.get_submodule(layer))
    all_t = torch.arange(k, device=x.device).expand(x.shape[0], k)

    def captum_5():
        return torch.stack([cap.attribute(x, target=j, relu_attributions=True) for j in range(k)], 1)

    res = _timed({"medxai": lambda: ours.attribute(x, all_t), "captum": captum_5}, repeats)
    return [row(f"Grad-CAM for all {k} labels, resnet18 {x.shape[-1]} px, batch {x.shape[0]}",
                f"{k} captum LayerGradCam calls", res["medxai"]["median_s"], res["captum"]["median_s"], target=2.5,
                agreement=_maxdiff(res["medxai"]["result"], res["captum"]["result"]), tol=1e-5, images=x.shape[0],
                **flop_fields(model, lambda: ours.attribute(x, all_t), captum_5, x, backward=True, repeats=repeats + 1),
                note="medxai: one forward, 5 gradients to the layer",
                miss_reason="the 5 backward passes to layer4 cost as much as the forward they share",
                device=str(x.device))]


def bench_smoothgrad(model: nn.Module, x: torch.Tensor, t: torch.Tensor, n: int, repeats: int) -> list[dict]:
    from captum.attr import NoiseTunnel, Saliency

    sigma = 0.15
    ours = SmoothGrad(model, n_samples=n, sigma=sigma, seed=0)
    nt = NoiseTunnel(Saliency(model))

    def captum_run():
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=n, stdevs=sigma, target=t, abs=False)

    res = _timed({"medxai": lambda: ours.attribute(x, t), "captum": captum_run}, repeats)
    # agreement with the same noise: captum's draw injected into medxai
    torch.manual_seed(123)
    ref = captum_run()
    torch.manual_seed(123)
    noise = torch.normal(0, torch.full((x.shape[0] * n, *x.shape[1:]), sigma, device=x.device))
    noise = noise.view(x.shape[0], n, *x.shape[1:]).transpose(0, 1)
    diff = _maxdiff(ours.attribute(x, t, noise=noise), ref)
    fl = flop_fields(model, lambda: ours.attribute(x, t), captum_run, x, backward=True, repeats=repeats + 1)
    return [row(f"SmoothGrad {n} samples, resnet18 {x.shape[-1]} px, batch {x.shape[0]}",
                "captum NoiseTunnel(Saliency)", res["medxai"]["median_s"], res["captum"]["median_s"],
                target=1.0, agreement=diff, tol=1e-5, images=x.shape[0],
                **fl,
                note=f"absolute sigma {sigma}; agreement with captum's noise injected",
                miss_reason="n forward + input-backward passes on both sides: parity is the physical limit; "
                            "the gap is within the shared machine's noise",
                device=str(x.device))]


def run(quick: bool = False) -> dict:
    dev = _device()
    model, src = _model(5, quick)
    model = model.to(dev)
    layer = model.default_cam_layer
    g = torch.Generator().manual_seed(0)
    if quick:
        s_ig, b_ig, steps, s_ada, b_ada, s_cam, b_cam, b_ml, n_sg, reps, ibs = 32, 2, 8, 32, 2, 32, 4, 2, 4, 1, [8, 16]
    else:
        s_ig, b_ig, steps, s_ada, b_ada, s_cam, b_cam, b_ml, n_sg, reps, ibs = \
            128, 2, 50, 48, 8, 96, 32, 8, 25, 2, [25, 100]
    x_ig = torch.rand(b_ig, 3, s_ig, s_ig, generator=g).to(dev)
    t_ig = (torch.arange(b_ig) % 5).to(dev)
    x_ada = torch.rand(b_ada, 3, s_ada, s_ada, generator=g).to(dev)
    t_ada = (torch.arange(b_ada) % 5).to(dev)
    x_cam = torch.rand(b_cam, 3, s_cam, s_cam, generator=g).to(dev)
    t_cam = (torch.arange(b_cam) % 5).to(dev)
    rows = []
    rows += bench_ig(model, x_ig, t_ig, steps, reps, ibs)
    rows += bench_ig_adaptive(model, x_ada, t_ada, steps)
    rows += bench_gradcam(model, x_cam, t_cam, layer, reps)
    rows += bench_multilabel(model, x_cam[:b_ml], layer, reps)
    rows += bench_smoothgrad(model, x_ig, t_ig, n_sg, reps)
    return {"kind": KIND, "rows": rows,
            "notes": f"Model: {src}, 5 outputs, random init (seed 0), eval mode; inputs U(0, 1); "
                     f"targets sample i -> class i mod 5; device {dev}; {reps} interleaved repeats after a warm-up."}
