"""How cost grows: time against batch size (1-64), image size (64-512 px) and IG steps (8-256),
medxai and captum side by side at every point (Grad-CAM: LayerGradCam; IG: IntegratedGradients,
one internal batch).

Model: the zoo's small-cnn (width 16, random init, seed 0, eval mode) so that the sweep fits the
shared 2-core machine; inputs U(0, 1), targets i mod 5. Each point: one untimed call per side,
then interleaved repeats (2, up to 7 for points under 1 s), the fastest run per side (the least
disturbed by other work on the machine). Rows give every point (ratio = captum / medxai) and, per curve, the
fitted log-log slope (1 = linear growth). Plot: ``docs/benchmarks_growth.png``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._harness import row, timeit_pair
from medxai.explain import GradCAM, IntegratedGradients

KIND = "growth"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def _point(model, layer, method: str, b: int, size: int, steps: int, repeats: int, g) -> dict[str, Any]:
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import LayerGradCam

    x = torch.rand(b, 3, size, size, generator=g)
    t = torch.arange(b) % 5
    if method == "gradcam":
        ours = GradCAM(model, layer=layer, upsample=False)
        cap = LayerGradCam(model, model.get_submodule(layer))
        fns = {"medxai": lambda: ours.attribute(x, t),
               "captum": lambda: cap.attribute(x, target=t, relu_attributions=True)}
    else:
        ours = IntegratedGradients(model, n_steps=steps)
        ours._chunk(model, x)  # the one-image memory probe, once per image shape: not part of the growth
        cap = CaptumIG(model)
        fns = {"medxai": lambda: ours.attribute(x, t),
               "captum": lambda: cap.attribute(x, target=t, n_steps=steps)}
    # one untimed call each; then cheap points get more repeats (noise dominates them), each time the
    # fastest of the interleaved runs (the least disturbed by the shared machine)
    t0 = time.perf_counter()
    fns["medxai"]()
    first = time.perf_counter() - t0
    fns["captum"]()
    reps = max(repeats, min(7, int(1.0 / max(first, 1e-3))))
    res = timeit_pair(fns, repeats=reps, warmup=0)
    diff = float((res["medxai"]["result"].detach().float() - res["captum"]["result"].detach().float()).abs().max())
    return {"medxai": min(res["medxai"]["times_s"]), "captum": min(res["captum"]["times_s"]), "diff": diff,
            "repeats": reps}


def _plot(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_of = {"batch": "batch size", "size": "image size (px)", "steps": "IG steps"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (axis, label) in zip(axes, axes_of.items(), strict=True):
        for c in curves.values():
            if c["axis"] != axis:
                continue
            for who, style in (("medxai", "-o"), ("captum", "--s")):
                ax.plot(c["x"], c[who], style, label=f"{c['method']} {who} (slope {_slope(c['x'], c[who]):.2f})")
            power = 2 if axis == "size" else 1  # the work grows with the pixels
            ref = [c["medxai"][0] * (v / c["x"][0]) ** power for v in c["x"]]
            ax.plot(c["x"], ref, ":", color="grey", linewidth=1,
                    label=f"{c['method']}: linear in the {'pixels' if power == 2 else 'work'} from its first point")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("time (s), fastest of the repeats")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Cost growth, small-cnn on CPU (medxai vs captum, same inputs)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(quick: bool = False) -> dict[str, Any]:
    from medxai.models import create

    torch.manual_seed(0)
    model = create("small-cnn", 5, 3, width=8 if quick else 16).eval()
    layer = model.default_cam_layer
    g = torch.Generator().manual_seed(0)
    if quick:
        batches, sizes, steps_list, base, ig_steps, size_batch, repeats = [1, 4], [16, 32], [4, 8], 16, 4, 1, 1
    else:
        batches, sizes, steps_list = [1, 2, 4, 8, 16, 32, 64], [64, 128, 256, 512], [8, 16, 32, 64, 128, 256]
        base, ig_steps, size_batch, repeats = 64, 8, 1, 2
    _point(model, layer, "gradcam", 2, base, ig_steps, 1, g)  # global warm-up
    _point(model, layer, "ig", 2, base, ig_steps, 1, g)
    sweeps = []
    for method in ("gradcam", "ig"):
        bs = batches if method == "gradcam" or quick else [1, 4, 16, 64]
        sweeps.append((method, "batch", [(b, b, base, ig_steps) for b in bs]))
        sweeps.append((method, "size", [(s, size_batch, s, ig_steps) for s in sizes]))
    sweeps.append(("ig", "steps", [(n, size_batch, base, n) for n in steps_list]))
    rows, curves = [], {}
    for method, axis, points in sweeps:
        name = "Grad-CAM" if method == "gradcam" else "IG"
        c = {"method": name, "axis": axis, "x": [], "medxai": [], "captum": []}
        for xv, b, size, steps in points:
            p = _point(model, layer, method, b, size, steps, repeats, g)
            c["x"].append(xv)
            c["medxai"].append(p["medxai"])
            c["captum"].append(p["captum"])
            what = f"{name}, batch {b}, {size} px" + (f", {steps} steps" if method == "ig" else "")
            rows.append(row(f"growth over {axis}: {what}", f"captum {'LayerGradCam' if method == 'gradcam' else 'IG'}",
                            p["medxai"], p["captum"], agreement=p["diff"], images=b, tol=1e-4,
                            axis=axis, x=xv, repeats=p["repeats"], note="fastest of the repeats"))
        curves[f"{method}-{axis}"] = c
        units = [xv ** 2 if axis == "size" else xv for xv in c["x"]]  # work grows with pixels, not side
        rows.append(row(f"growth exponent over {axis} ({name})", "captum", None, None,
                        slope_medxai=_slope(c["x"], c["medxai"]), slope_captum=_slope(c["x"], c["captum"]),
                        slope_vs_work_medxai=_slope(units, c["medxai"]), axis=axis,
                        per_unit_first_to_last_medxai=(c["medxai"][-1] / units[-1]) / (c["medxai"][0] / units[0]),
                        note="log-log slope of time against the axis; slope_vs_work: against the work (pixels "
                             "for size), 1 = linear; per_unit_first_to_last: time per unit of work at the last "
                             "point / at the first"))
    fig_path = (DOCS / "benchmarks_growth.png") if not quick else \
        (Path(__file__).resolve().parent / "results" / "quick" / "growth.png")
    _plot(curves, fig_path)
    return {"kind": KIND, "rows": rows, "figure": "benchmarks_growth.png" if not quick else None,
            "curves": curves,
            "notes": f"Model small-cnn, {repeats}-7 interleaved repeats per point (fastest) after a warm-up; IG at "
                     f"{ig_steps} steps for the batch and size sweeps; size sweep at batch {size_batch}. "
                     f"Each point's inputs are fresh U(0, 1) draws (seeded). log2 of the largest / smallest "
                     f"batch: {math.log2(max(batches) / min(batches)):.0f} doublings."}
