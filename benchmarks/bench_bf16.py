"""bf16 autocast against fp32 for medxai's IG and Grad-CAM (CPU: AMX / AVX512-BF16 where present; GPU
when one runs the suite).

The same medxai method on the same model, inputs and targets, once in fp32 and once inside
``torch.autocast(device, dtype=torch.bfloat16)``, and once with ``precision="bf16"`` (the weights cast
to bf16 once per explanation by ``medxai.explain.precision.low_precision``, sums in fp32), interleaved,
warm-up, repeats, median; ratio =
fp32 time / bf16 time (target >= 2x). Agreement: 1 - the smallest per-sample Spearman rank
correlation between the bf16 and the fp32 maps; a second row per method holds the Spearman
target (>= 0.99).
Model: the zoo's resnet18 (random init, seed 0, eval mode); quick: a width-8 small-cnn.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks._harness import bare_rate, batch_like, count_flops, count_flops_fed, cpu_flags, row, timeit_pair
from medxai.explain import GradCAM, IntegratedGradients

KIND = "bf16"
BARE_NOTE = "; bare rate: the model's own bf16 passes (autocast, or bf16 weights for precision='bf16')"


def _min_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().float().flatten(1).numpy()
    b = b.detach().float().flatten(1).numpy()
    return float(min(spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)))


def _rho_row(speed_row: dict, rho: float) -> dict:
    return row(speed_row["work"] + ": Spearman to the fp32 maps", speed_row["peer"], None, None, target=0.99,
               target_on="min_spearman", min_spearman=rho,
               note="the smallest per-sample Spearman rank correlation of the bf16 and the fp32 maps",
               miss_reason="bf16 keeps 8 mantissa bits: the IG integrand's many small gradients reorder the "
                           "pixels whose attributions are near zero (the tail of the ranking)")


def _pair(fn, dev: torch.device, repeats: int, cast=None) -> dict:
    """fp32, bf16 autocast and (``cast``: the method with ``precision="bf16"``) weights cast once, interleaved."""
    def bf16():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return fn()
    fns = {"fp32": fn, "bf16": bf16} | ({"cast": cast} if cast is not None else {})
    return timeit_pair(fns, repeats=repeats, warmup=1)


def _flop_fields(fn, cast, model: torch.nn.Module, x: torch.Tensor, dev: torch.device, reps: int) -> dict:
    """Per bf16 variant (``bf16`` autocast, ``cast``), a row's FLOP keys: the model FLOPs of one untimed
    call of it and of the fp32 call, and the bare-pass rate of the model's bf16 passes (forward + input
    backward) at the batch the method feeds the model: under autocast, or with bf16 weights."""
    fp32, fed = count_flops_fed(model, fn)
    xb = batch_like(x, fed)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        f_auto = count_flops(fn)
        r_auto = bare_rate(model, xb, backward=True, repeats=reps)
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    r_cast = bare_rate(m16, xb.to(torch.bfloat16), backward=True, repeats=reps)
    return {"bf16": {"flops": f_auto, "peer_flops": fp32, "bare_flops_per_s": r_auto, "fed_batch": fed},
            "cast": {"flops": count_flops(cast), "peer_flops": fp32, "bare_flops_per_s": r_cast, "fed_batch": fed}}


def _cast_rows(r: dict, work: str, peer: str, images: int, note: str, dev: torch.device,
               flops: dict) -> list[dict]:
    """The ``precision="bf16"`` row (weights cast once per explanation, fp32 sums) and its Spearman row."""
    rho = _min_spearman(r["cast"]["result"], r["fp32"]["result"])
    speed = row(work, peer, r["cast"]["median_s"], r["fp32"]["median_s"], target=2.0, agreement=1 - rho,
                agreement_kind="1 - min Spearman(bf16, fp32) per sample", images=images, min_spearman=rho,
                autocast_s=r["bf16"]["median_s"], note=note, device=str(dev), **flops,
                miss_reason="weights cast once, but activations and gradients are still rounded to bf16 at "
                            "every layer; CPU bf16 max-pool and batch-norm backward have no fast (oneDNN) "
                            "kernel, and the method's fp32 bookkeeping (path points, sums) does not shrink")
    return [speed, _rho_row(speed, rho)]


def run(quick: bool = False) -> dict[str, Any]:
    from medxai.models import create

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if quick:
        model, name = create("small-cnn", 5, 3, width=8), "small-cnn (width 8)"
        s_ig, b_ig, steps, s_cam, b_cam, reps = 32, 2, 4, 32, 4, 1
    else:
        model, name = create("resnet18", 5, 3), "resnet18"
        s_ig, b_ig, steps, s_cam, b_cam, reps = 128, 2, 16, 128, 16, 2
    model = model.to(dev).eval()
    g = torch.Generator().manual_seed(0)
    x_ig = torch.rand(b_ig, 3, s_ig, s_ig, generator=g).to(dev)
    x_cam = torch.rand(b_cam, 3, s_cam, s_cam, generator=g).to(dev)
    t_ig = (torch.arange(b_ig) % 5).to(dev)
    t_cam = (torch.arange(b_cam) % 5).to(dev)
    flags = cpu_flags()
    hw = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    hw_note = (f"CPU bf16 hardware: {', '.join(hw)}" if hw else "no AMX / AVX512-BF16 on this CPU: bf16 is "
               "emulated by conversions") if dev.type == "cpu" else "GPU"
    with torch.no_grad():
        fwd = _pair(lambda: model(x_cam), dev, reps)
    fwd_ratio = fwd["fp32"]["median_s"] / fwd["bf16"]["median_s"]
    fwd_note = f"the plain no-grad forward at batch {b_cam} runs {fwd_ratio:.2f}x faster in bf16"
    if dev.type != "cpu":
        why = "memory-bound at this size"
    elif not hw:
        why = "this CPU has no bf16 matrix units, so autocast only adds conversions"
    else:
        why = (f"{fwd_note}, but in the explanation pass (autograd on, input or layer gradients) autocast's "
               "fp32 <-> bf16 copies of activations and of the weights (not cached: the parameters do not "
               "require grad) and the batch norms take a large share (profiled: aten::copy_ ~22%, batch norm "
               "~10% of a bf16 Grad-CAM call)")
    rows = []
    ig = IntegratedGradients(model, n_steps=steps)
    ig16 = IntegratedGradients(model, n_steps=steps, precision="bf16")
    r = _pair(lambda: ig.attribute(x_ig, t_ig), dev, reps, cast=lambda: ig16.attribute(x_ig, t_ig))
    fl = _flop_fields(lambda: ig.attribute(x_ig, t_ig), lambda: ig16.attribute(x_ig, t_ig), model, x_ig, dev, reps)
    rho = _min_spearman(r["bf16"]["result"], r["fp32"]["result"])
    rows.append(row(f"IG {steps} steps, {name} {s_ig} px, batch {b_ig}: bf16 autocast", "medxai IG fp32",
                    r["bf16"]["median_s"], r["fp32"]["median_s"], target=2.0, agreement=1 - rho,
                    agreement_kind="1 - min Spearman(bf16, fp32) per sample", images=b_ig,
                    min_spearman=rho, forward_bf16_speedup=fwd_ratio, note=hw_note + BARE_NOTE, miss_reason=why,
                    device=str(dev), **fl["bf16"]))
    rows.append(_rho_row(rows[-1], rho))
    rows += _cast_rows(r, f"IG {steps} steps, {name} {s_ig} px, batch {b_ig}: precision='bf16' (weights cast once)",
                       "medxai IG fp32", b_ig, hw_note + "; path-point sum and (x - x') * in fp32" + BARE_NOTE, dev,
                       fl["cast"])
    cam = GradCAM(model, layer=model.default_cam_layer)
    cam16 = GradCAM(model, layer=model.default_cam_layer, precision="bf16")
    r = _pair(lambda: cam.attribute(x_cam, t_cam), dev, reps, cast=lambda: cam16.attribute(x_cam, t_cam))
    fl = _flop_fields(lambda: cam.attribute(x_cam, t_cam), lambda: cam16.attribute(x_cam, t_cam), model, x_cam,
                      dev, reps)
    rho = _min_spearman(r["bf16"]["result"], r["fp32"]["result"])
    rows.append(row(f"Grad-CAM {model.default_cam_layer}, {name} {s_cam} px, batch {b_cam}: bf16 autocast",
                    "medxai Grad-CAM fp32", r["bf16"]["median_s"], r["fp32"]["median_s"], target=2.0,
                    agreement=1 - rho, agreement_kind="1 - min Spearman(bf16, fp32) per sample",
                    images=b_cam, min_spearman=rho, forward_bf16_speedup=fwd_ratio,
                    note=hw_note + "; maps upsampled to the image" + BARE_NOTE,
                    miss_reason=why, device=str(dev), **fl["bf16"]))
    rows.append(_rho_row(rows[-1], rho))
    rows += _cast_rows(r, f"Grad-CAM {model.default_cam_layer}, {name} {s_cam} px, batch {b_cam}: precision='bf16' "
                       "(weights cast once)", "medxai Grad-CAM fp32", b_cam,
                       hw_note + "; channel weights and weighted sum in fp32; maps upsampled to the image" + BARE_NOTE,
                       dev, fl["cast"])
    return {"kind": KIND, "rows": rows,
            "notes": f"ratio = fp32 time / bf16 time; {reps} interleaved repeats after a warm-up; "
                     f"torch threads {torch.get_num_threads()}; "
                     f"max |map| fp32 {float(np.abs(r['fp32']['result'].float().numpy()).max()):.3g}."}
