"""Reference ViT explanations, one image at a time, written the way the papers' code does it.

The oracles of ``tests/test_explain_attention.py`` and the peers of ``bench_vit_explain.py``:
forward hooks on the explicit attention path (the Dropout after the softmax receives the
probabilities), gradients by ``Tensor.register_hook`` and ``backward()`` over the parameters
(Transformer-MM-Explainability), full N x N rollout matrices (jacobgil/vit-explain), and for
Chefer 2021a an autograd LRP in the style of Chefer's ``layers_ours.py`` (``gradprop``:
x * d(z)/d(x) . s) fed by hooks on the model's own modules. Rows come back over the patch
tokens (N - prefix,), on the image's device and dtype; nothing here is medxai's code path.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from medxai.models.vit import Attention


@contextmanager
def explicit_probs(model, grads: dict | None = None):
    """Hooks on each block's attention Dropout (explicit path): its input is softmax(q k^T / s).
    With ``grads`` the probabilities' gradients are saved by tensor hooks (the reference code)."""
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    store: list = []

    def hook(_m, inp, _out):
        store.append(inp[0])
        if grads is not None:
            i = len(store) - 1
            inp[0].register_hook(lambda g, i=i: grads.__setitem__(i, g))

    handles = [a.attn_drop.register_forward_hook(hook) for a in mods]
    for a in mods:
        a.fused_attn = False
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for a in mods:
            a.fused_attn = True


def fuse(a: torch.Tensor, how: str) -> torch.Tensor:
    """Head fusion of (heads, N, N) attention."""
    return {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[how]


def _eye(n: int, x1: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=x1.dtype, device=x1.device)


def rollout_row(model, x1, fusion: str = "mean", discard: float = 0.0, start: int = 0) -> torch.Tensor:
    """Abnar & Zuidema 2020 rollout as jacobgil/vit-explain: (fused A + I) row-normalised, multiplied."""
    with explicit_probs(model) as st, torch.no_grad():
        model(x1)
    n = st[0].shape[-1]
    eye = _eye(n, x1)
    r = eye.clone()
    for a in st[start:]:
        a = fuse(a[0], fusion).clone()
        k = int(n * n * discard)
        if k:
            flat = a.view(-1)
            order = np.argsort(flat.cpu().numpy(), kind="stable")[:k]
            order = order[order != 0]  # the [CLS, CLS] entry is kept (jacobgil)
            flat[torch.as_tensor(order, device=flat.device)] = 0
        b = a + eye
        b = b / b.sum(dim=-1, keepdim=True)
        r = b @ r
    return r[0, model.num_prefix_tokens:]


def reference_backward(model, x1, target: int, output: str = "logit"):
    """The reference code's way: params require grad, one_hot * output summed, backward().
    Returns per-block attention probabilities and their gradients, (heads, N, N) each."""
    grads: dict = {}
    for p in model.parameters():
        p.requires_grad_(True)
    with explicit_probs(model, grads) as st:
        out = model(x1)
        if output == "softmax":
            out = out.softmax(-1)
        one_hot = torch.zeros_like(out)
        one_hot[0, target] = 1
        model.zero_grad()
        (one_hot * out).sum().backward()
    model.zero_grad(set_to_none=True)
    return [a.detach()[0] for a in st], [grads[i][0] for i in range(len(st))]


def generic_row(model, x1, target: int, output: str = "logit") -> torch.Tensor:
    """Chefer 2021b: R += mean_h((grad * A)^+) @ R from R = I."""
    attns, grads = reference_backward(model, x1, target, output)
    r = _eye(attns[0].shape[-1], x1)
    for a, g in zip(attns, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(dim=0) @ r
    return r[0, model.num_prefix_tokens:]


# ---- Chefer 2021a in the style of layers_ours.py: autograd gradprop on recomputed forwards

def _sdiv(a, b):
    return torch.where(b == 0, torch.zeros_like(a), a / torch.where(b == 0, torch.ones_like(b), b))


def _gradprop(z, xs, s):
    return torch.autograd.grad(z, xs, s, retain_graph=True)


def rp_linear(x, w, r):
    """alpha = 1, beta = 0 (the inhibitor term vanishes), no bias."""
    px = x.clamp(min=0).detach().requires_grad_(True)
    nx = x.clamp(max=0).detach().requires_grad_(True)
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    with torch.enable_grad():
        z1, z2 = F.linear(px, pw), F.linear(nx, nw)
    s = _sdiv(r, z1 + z2)
    return px * _gradprop(z1, px, s)[0] + nx * _gradprop(z2, nx, s)[0]


def rp_simple(fn, xs, r):
    xs = [x.detach().requires_grad_(True) for x in xs]
    with torch.enable_grad():
        z = fn(*xs)
    c = _gradprop(z, xs, _sdiv(r, z))
    return [x.detach() * ci for x, ci in zip(xs, c, strict=True)]


def rp_add(x0, x1, r):
    a, b = rp_simple(torch.add, [x0, x1], r)
    sa, sb = a.sum(), b.sum()
    fa = _sdiv(sa.abs(), sa.abs() + sb.abs()) * r.sum()
    fb = _sdiv(sb.abs(), sa.abs() + sb.abs()) * r.sum()
    return a * _sdiv(fa, sa), b * _sdiv(fb, sb)


def rp_clone(x, rs):
    xl = x.detach().requires_grad_(True)
    with torch.enable_grad():
        zs = [xl * 1 for _ in rs]
    c = _gradprop(zs, xl, [_sdiv(r, z.detach()) for r, z in zip(rs, zs, strict=True)])[0]
    return x.detach() * c


def rp_conv_zb(xn, w, r, lo, hi, p):
    """Chefer's Conv2d.relprop for the first layer, via autograd of conv2d."""
    xs = [t.detach().clone().requires_grad_(True) for t in (xn, torch.full_like(xn, lo), torch.full_like(xn, hi))]
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    with torch.enable_grad():
        za = F.conv2d(xs[0], w, stride=p) - F.conv2d(xs[1], pw, stride=p) - F.conv2d(xs[2], nw, stride=p)
    c = _gradprop(za, xs, _sdiv(r, za))
    return sum(x.detach() * ci for x, ci in zip(xs, c, strict=True))


def lrp(model, x1, target: int, start: int = 0, pixels: bool = True):
    """Chefer 2021a for one image: (row over the patch tokens, per-block R_A (heads, N, N), pixel
    relevance (C, H, W) through the embedding, or None when ``pixels`` is False)."""
    rec: dict = {}
    hs = []
    blocks = list(model.blocks)

    def keep(name, which="out"):
        def hook(_m, inp, out):
            rec[name] = (inp[0] if which == "in" else out).detach()
        return hook

    for i, blk in enumerate(blocks):
        hs.append(blk.register_forward_pre_hook(lambda _m, inp, i=i: rec.__setitem__(f"x{i}", inp[0].detach())))
        for mod, key, which in ((blk.norm1, "n1", "out"), (blk.attn.qkv, "qkv", "out"), (blk.attn.proj, "ctx", "in"),
                                (blk.ls1, "ya", "out"), (blk.norm2, "n2", "out"), (blk.mlp.fc2, "hid", "in"),
                                (blk.ls2, "ym", "out")):
            hs.append(mod.register_forward_hook(keep(f"{key}{i}", which)))
    hs.append(model.head.register_forward_hook(keep("z", "in")))
    if pixels:
        hs.append(model.patch_embed.proj.register_forward_hook(keep("xn", "in")))
        hs.append(model.patch_embed.register_forward_hook(keep("tok")))
    try:
        attns, grads = reference_backward(model, x1, target)
    finally:
        for h in hs:
            h.remove()
    heads = blocks[0].attn.num_heads
    r = torch.zeros(1, model.head.out_features, dtype=x1.dtype, device=x1.device)
    r[0, target] = 1
    r = rp_linear(rec["z"], model.head.weight, r)
    n = attns[0].shape[-1]
    rt = torch.zeros(1, n, r.shape[-1], dtype=x1.dtype, device=x1.device)
    rt[:, 0] = r  # IndexSelect (CLS pooling); the final LayerNorm passes relevance through
    r_attn = [None] * len(blocks)
    for i in reversed(range(len(blocks))):
        blk = blocks[i]
        x, ya, ym = rec[f"x{i}"], rec[f"ya{i}"], rec[f"ym{i}"]
        r1, r2 = rp_add(x + ya, ym, rt)
        r2 = rp_linear(rec[f"hid{i}"], blk.mlp.fc2.weight, r2)
        r2 = rp_linear(rec[f"n2{i}"], blk.mlp.fc1.weight, r2)
        rt = rp_clone(x + ya, [r1, r2])
        r1, r2 = rp_add(x, ya, rt)
        r2 = rp_linear(rec[f"ctx{i}"], blk.attn.proj.weight, r2)
        r2 = r2.reshape(1, n, heads, -1).permute(0, 2, 1, 3)  # b n (h d) -> b h n d
        q, k, v = rec[f"qkv{i}"].reshape(1, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        ra, rv = rp_simple(lambda a_, v_: torch.einsum("bhij,bhjd->bhid", a_, v_), [attns[i][None], v], r2)
        ra, rv = ra / 2, rv / 2
        r_attn[i] = ra[0]
        rq, rk = rp_simple(lambda q_, k_: torch.einsum("bhid,bhjd->bhij", q_, k_), [q, k], ra)
        rq, rk = rq / 2, rk / 2
        rqkv = torch.stack([rq, rk, rv]).permute(1, 3, 0, 2, 4).reshape(1, n, -1)
        r2 = rp_linear(rec[f"n1{i}"], blk.attn.qkv.weight, rqkv)
        rt = rp_clone(x, [r1, r2])
    p = model.num_prefix_tokens
    pix = None
    if pixels:  # embedding: cat(cls, tokens) + pos, then the patch projection (z^B, data bounds)
        cat = torch.cat([model.cls_token.detach(), rec["tok"]], 1) if p == 1 else None
        r_cat, _ = rp_add(cat, model.pos_embed.detach(), rt)
        g = math.isqrt(n - p)
        r_grid = r_cat[:, p:].transpose(1, 2).reshape(1, -1, g, g)
        xn = rec["xn"]
        pix = rp_conv_zb(xn, model.patch_embed.proj.weight.detach(), r_grid, xn.min(), xn.max(),
                         model.patch_size)[0]
    # rollout of (cam + I) as compute_rollout_attention
    eye = _eye(n, x1)
    joint = None
    for i in range(start, len(blocks)):
        cam = (grads[i] * r_attn[i]).clamp(min=0).mean(dim=0) + eye
        joint = cam if joint is None else cam @ joint
    return joint[0, p:], r_attn, pix
