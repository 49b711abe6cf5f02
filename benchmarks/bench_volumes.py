"""Explanations of volumes (B, C, D, H, W): IG and 3-D occlusion, medxai vs captum.

Same model (medxai's ``small-cnn3d``, random init, eval mode; full mode: MONAI's 3-D resnet18 from
the zoo, and IG of one 96^3 volume on small-cnn3d for the peak memory), same volumes and
settings, run side by side in one process (interleaved, warm-up, repeats, median). Agreement:
max |medxai - captum| over the maps. Peak memory: the rise of the process's peak RSS during one
call (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), as in ``bench_explain_gradient``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks._harness import flop_fields, peak_mb, row, sync, timeit_pair
from medxai.explain import IntegratedGradients, Occlusion

KIND = "volumes"


def _model(quick: bool) -> tuple[nn.Module, str]:
    from medxai.models import create

    torch.manual_seed(0)
    if quick:
        return create("small-cnn3d", 2, 1, width=4).eval(), "medxai small-cnn3d (width 4)"
    return create("resnet18", 2, 1, spatial_dims=3).eval(), "medxai resnet18, spatial_dims=3 (MONAI)"


def _timed(fns: dict, repeats: int) -> dict:
    def wrap(f):
        def g():
            out = f()
            sync()
            return out
        return g
    return timeit_pair({k: wrap(f) for k, f in fns.items()}, repeats=repeats, warmup=1)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def bench_ig(model: nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int, repeats: int) -> list[dict[str, Any]]:
    from captum.attr import IntegratedGradients as CaptumIG

    ours = IntegratedGradients(model, n_steps=steps)
    cig = CaptumIG(model)
    chunk = ours._chunk(model, x)  # the probe, outside the timings
    res = _timed({"medxai": lambda: ours.attribute(x, t),
                  "captum": lambda: cig.attribute(x, target=t, n_steps=steps, internal_batch_size=chunk)}, repeats)
    diff = _maxdiff(res["medxai"]["result"], res["captum"]["result"])
    scale = float(res["captum"]["result"].abs().max())
    mem_ours = peak_mb(lambda: ours.attribute(x, t))
    mem_cap = peak_mb(lambda: cig.attribute(x, target=t, n_steps=steps, internal_batch_size=chunk))
    fl = flop_fields(model, lambda: ours.attribute(x, t), lambda: cig.attribute(x, target=t, n_steps=steps,
                     internal_batch_size=chunk), x, backward=True)
    work = f"IG {steps} steps (Gauss-Legendre), volume {tuple(x.shape[2:])}, batch {x.shape[0]}"
    return [row(work, "captum IntegratedGradients", res["medxai"]["median_s"], res["captum"]["median_s"],
                target=1.0, agreement=diff, tol=1e-5 * max(scale, 1.0), images=x.shape[0],
                peak_mb_medxai=mem_ours, peak_mb_peer=mem_cap, **fl,
                memory_ratio=(mem_cap / mem_ours) if (mem_ours and mem_cap) else None,
                note=f"captum internal_batch_size = medxai's chunk ({chunk} path points, from its probed peak "
                     f"per volume and 1 GiB budget); max |captum map| {scale:.3g}; peak-RSS rise of one call",
                miss_reason="the model's forward and backward are the whole cost on both sides",
                device=str(x.device))]


def bench_occlusion(model: nn.Module, x: torch.Tensor, t: torch.Tensor, window: tuple, stride: tuple,
                    repeats: int) -> list[dict[str, Any]]:
    from captum.attr import Occlusion as CaptumOcc

    ours = Occlusion(model, window=window, stride=stride)
    occ = CaptumOcc(model)
    per = 16
    res = _timed({"medxai": lambda: ours.attribute(x, t),
                  "captum": lambda: occ.attribute(x, sliding_window_shapes=(1, *window), strides=(1, *stride),
                                                  baselines=0.0, target=t, perturbations_per_eval=per)}, repeats)
    diff = _maxdiff(res["medxai"]["result"], res["captum"]["result"])
    scale = float(res["captum"]["result"].abs().max())
    mem_ours = peak_mb(lambda: ours.attribute(x, t))
    mem_cap = peak_mb(lambda: occ.attribute(x, sliding_window_shapes=(1, *window), strides=(1, *stride),
                                            baselines=0.0, target=t, perturbations_per_eval=per))
    fl = flop_fields(model, lambda: ours.attribute(x, t), lambda: occ.attribute(
        x, sliding_window_shapes=(1, *window), strides=(1, *stride), baselines=0.0, target=t,
        perturbations_per_eval=per), x)
    work = f"Occlusion window {window} stride {stride}, volume {tuple(x.shape[2:])}, batch {x.shape[0]}"
    return [row(work, "captum Occlusion", res["medxai"]["median_s"], res["captum"]["median_s"], target=1.0,
                agreement=diff, tol=1e-5 * max(scale, 1.0), images=x.shape[0],
                peak_mb_medxai=mem_ours, peak_mb_peer=mem_cap, **fl,
                memory_ratio=(mem_cap / mem_ours) if (mem_ours and mem_cap) else None,
                note=f"captum perturbations_per_eval={per} (one sample at a time); medxai batches all windows "
                     "of all samples through the engine; peak-RSS rise of one call",
                miss_reason="the occluded forwards are the whole cost on both sides", device=str(x.device))]


def run(quick: bool = False) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, src = _model(quick)
    model = model.to(dev)
    g = torch.Generator().manual_seed(0)
    if quick:
        shape, b, steps, win, st, reps = (8, 16, 16), 2, 4, (4, 8, 8), (4, 8, 8), 1
    else:
        shape, b, steps, win, st, reps = (32, 64, 64), 2, 32, (8, 16, 16), (8, 16, 16), 2
    x = torch.rand(b, 1, *shape, generator=g).to(dev)
    t = (torch.arange(b) % 2).to(dev)
    rows = bench_ig(model, x, t, steps, reps) + bench_occlusion(model, x, t, win, st, reps)
    if not quick:  # the memory figure: IG of one 96^3 volume, chunked by the 1 GiB default budget
        from medxai.models import create

        torch.manual_seed(0)
        small = create("small-cnn3d", 2, 1).eval().to(dev)
        x96 = torch.rand(1, 1, 96, 96, 96, generator=g).to(dev)
        rows += bench_ig(small, x96, t[:1], 16, 1)
    return {"kind": KIND, "rows": rows,
            "notes": f"Model: {src}, 2 outputs, random init (seed 0), eval mode; volumes U(0, 1) of {shape}; "
                     f"targets sample i -> class i mod 2; device {dev}; {reps} interleaved repeats after a warm-up."}
