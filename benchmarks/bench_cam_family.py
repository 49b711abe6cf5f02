"""The CAM family (HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM, FullGrad) against
a straightforward per-sample reference loop (no peer library runs here: pytorch-grad-cam needs
torchvision). The reference is written from each paper's equation, one image at a time, with a
forward hook on the layer (ScoreCAM / AblationCAM: the K masked / ablated copies of one image in
batches of 16, as pytorch-grad-cam loops); medxai runs the batch (perturbed copies through the
engine, ablation by a hook that expands the layer's output). Maps compared at layer resolution
(FullGrad at the input's), max |difference| over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._harness import flop_fields, row, sync, timeit_pair
from medxai.explain import AblationCAM, EigenCAM, FullGrad, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from medxai.explain.cam import first_component, minmax_maps
from medxai.explain.cam_family import _bias_of

KIND = "cam_family"
REF_BATCH = 16
FORWARD_ONLY = {"EigenCAM", "ScoreCAM", "AblationCAM"}  # the others need gradients: bare = forward + backward


def _model(quick: bool) -> tuple[nn.Module, str, str]:
    from medxai.models import create

    torch.manual_seed(0)
    if quick:
        m = create("small-cnn", num_classes=4, width=8)
        return m.eval(), "features.block3", "small-cnn (width 8)"
    m = create("resnet18", num_classes=4)
    return m.eval(), m.default_cam_layer, "resnet18"


def _act_grad(model: nn.Module, layer: nn.Module, x1: torch.Tensor, t: int, grad: bool = True):
    """One image: the layer's output A (K, h, w) and d f_t / d A."""
    store: dict = {}

    def hook(_m, _i, out):
        store["a"] = out
        return out.clone()

    h = layer.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            out = model(x1)
    finally:
        h.remove()
    a = store["a"]
    if not grad:
        return a[0].detach(), None, out[0, t].detach()
    (g,) = torch.autograd.grad(out[0, t], a)
    return a[0].detach(), g[0], out[0, t].detach()


def _ref_grad_cam(kind: str) -> Callable:
    def ref(model, layer, x, t):
        maps = []
        for i in range(x.shape[0]):
            a, g, _ = _act_grad(model, layer, x[i:i + 1], int(t[i]), grad=kind != "eigencam")
            if kind == "hirescam":
                m = (g * a).sum(0)
            elif kind == "xgradcam":
                m = ((a * g).sum((1, 2)) / (a.sum((1, 2)) + 1e-7))[:, None, None].mul(a).sum(0)
            elif kind == "layercam":
                m = (g.clamp(min=0) * a).sum(0)
            else:
                m = first_component(a[None])[0, 0]
            maps.append(m.clamp(min=0))
        return torch.stack(maps)[:, None]
    return ref


def _ref_scorecam(model, layer, x, t):
    maps = []
    for i in range(x.shape[0]):
        a, _, _ = _act_grad(model, layer, x[i:i + 1], int(t[i]), grad=False)
        h = F.interpolate(a[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
        lo, hi = h.amin((2, 3), keepdim=True), h.amax((2, 3), keepdim=True)
        masked = x[i:i + 1] * (h - lo) / (hi - lo + 1e-8)
        with torch.no_grad():
            s = torch.cat([model(masked[j:j + REF_BATCH])[:, int(t[i])] for j in range(0, len(masked), REF_BATCH)])
        maps.append((torch.softmax(s, 0)[:, None, None] * a).sum(0).clamp(min=0))
    return torch.stack(maps)[:, None]


def _ref_ablationcam(model, layer, x, t):
    maps = []
    for i in range(x.shape[0]):
        a, _, y = _act_grad(model, layer, x[i:i + 1], int(t[i]), grad=False)
        k = a.shape[0]
        scores = []
        for j in range(0, k, REF_BATCH):
            ch = torch.arange(j, min(j + REF_BATCH, k))

            def hook(_m, _i, out, ch=ch):
                out = out.clone()
                out[torch.arange(len(ch)), ch] = 0
                return out

            h = layer.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    scores.append(model(x[i:i + 1].expand(len(ch), -1, -1, -1))[:, int(t[i])])
            finally:
                h.remove()
        w = (y - torch.cat(scores)) / y
        maps.append((w[:, None, None] * a).sum(0).clamp(min=0))
    return torch.stack(maps)[:, None]


def _ref_fullgrad(model, _layer, x, t):
    mods = [(m, b) for m in model.modules() if (b := _bias_of(m)) is not None]
    maps = []
    for i in range(x.shape[0]):
        outs: list = []

        def keep(_m, _i, o, outs=outs):
            outs.append(o)
            return o.clone()

        hs = [m.register_forward_hook(keep) for m, _ in mods]
        x1 = x[i:i + 1].clone().requires_grad_(True)
        try:
            out = model(x1)
        finally:
            for h in hs:
                h.remove()
        gs = torch.autograd.grad(out[0, int(t[i])], [x1, *outs])
        s = minmax_maps((gs[0] * x1).abs().detach(), 1).sum(1)
        for (_, b), g in zip(mods, gs[1:], strict=True):
            z = F.interpolate((g * b[None, :, None, None]).abs(), size=x.shape[2:], mode="bilinear",
                              align_corners=False)
            s = s + minmax_maps(z).sum(1)
        maps.append(s[0])
    return torch.stack(maps)[:, None]


METHODS = [("HiResCAM", HiResCAM, _ref_grad_cam("hirescam")), ("XGradCAM", XGradCAM, _ref_grad_cam("xgradcam")),
           ("LayerCAM", LayerCAM, _ref_grad_cam("layercam")), ("EigenCAM", EigenCAM, _ref_grad_cam("eigencam")),
           ("ScoreCAM", ScoreCAM, _ref_scorecam), ("AblationCAM", AblationCAM, _ref_ablationcam),
           ("FullGrad", FullGrad, _ref_fullgrad)]


def _with_frozen(model: nn.Module, fn: Callable) -> Callable:
    def run():
        out = fn()
        sync()
        return out
    return run


def run(quick: bool = False) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, layer_name, src = _model(quick)
    model = model.to(dev)
    layer = model.get_submodule(layer_name)
    size, b, reps = (32, 2, 3) if quick else (64, 4, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=g).to(dev)
    t = (torch.arange(b) % 4).to(dev)
    rows = []
    bares: dict = {}
    for name, cls, ref in METHODS:
        ours = cls(model) if cls is FullGrad else cls(model, layer=layer_name, upsample=False)
        fns = {"medxai": _with_frozen(model, lambda ours=ours: ours.attribute(x, t)),
               "reference": _with_frozen(model, lambda ref=ref: ref(model, layer, x, t))}
        res = timeit_pair(fns, repeats=reps, warmup=1)
        a, r = res["medxai"]["result"], res["reference"]["result"]
        diff = float((a.detach().float() - r.detach().float()).abs().max())
        scale = float(r.abs().max())
        rows.append(row(f"{name}, {src} {size} px, batch {b}, per-sample targets",
                        "per-sample reference loop (this module)", res["medxai"]["median_s"],
                        res["reference"]["median_s"], target=1.0, agreement=diff, tol=1e-5 * max(scale, 1.0),
                        images=b, note=f"layer {layer_name if cls is not FullGrad else '(all conv / BN)'}; "
                                       f"max |reference map| {scale:.3g}",
                        miss_reason="the same model work on both sides; on a tiny model medxai's fixed cost per call "
                                    "(input checks, preserve_model's save and restore of every module's state, "
                                    "about 1 ms) outweighs the per-sample loop's extra calls",
                        device=str(dev), **flop_fields(model, fns["medxai"], fns["reference"], x,
                                                    backward=name not in FORWARD_ONLY, repeats=reps, bares=bares)))
    return {"kind": KIND, "rows": rows,
            "notes": f"Model: medxai.models {src}, 4 outputs, random init (seed 0), eval mode; inputs U(0, 1); "
                     f"targets sample i -> class i mod 4; device {dev}; {reps} interleaved repeats after a warm-up."}
