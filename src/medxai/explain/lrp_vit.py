"""LRP through a medxai ViT (Chefer, Gur & Wolf 2021a, CVPR): ``vit_lrp`` and its rules.

``vit_lrp(model, x, targets)`` propagates one-hot relevance at each sample's target logit down the
ViT's forward (written out in ``_forward_record``) to the input pixels and returns an ``LRPTrace``;
``_relevance_pass`` is the propagation itself, which ``medxai.explain.CheferLRP`` (transformer
attribution, ``attention.py``) stops at a block to read the attention relevances.
Definitions: ``definitions.md`` section 1, "Attention maps for ViTs".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError
from medxai.explain.base import check_target_range
from medxai.models.vit import Attention, VisionTransformer, resample_pos_embed

__all__ = ["LRPTrace", "vit_lrp"]

BOUNDS = ("data", "domain")


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, 0 where b == 0 (exact otherwise: no epsilon is added)."""
    zero = b == 0
    return torch.where(zero, torch.zeros((), dtype=a.dtype, device=a.device), a / torch.where(zero, 1, b))


@dataclass
class LRPTrace:
    """What ``vit_lrp`` propagated, per sample (one target per sample).

    ``sums``: name -> (B,) total relevance at that point, in propagation order (output, head.in,
    tokens, blocks.L-1.out ... blocks.0.in, embed.*, input). ``attn``: per block (B, heads, N, N)
    relevance of the attention probabilities (None for blocks not reached or not kept).
    ``input``: (B, C, H, W) relevance of the (normalised) input pixels, or None.
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    attn: list[torch.Tensor | None] = field(default_factory=list)
    input: torch.Tensor | None = None


def _linear_rule(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """LRP alpha=1, beta=0 on ``F.linear(x, w)`` without bias: relevance r (..., out) shared in
    proportion to the positive contributions x_i w_ji > 0 (signed inputs split as Chefer's
    ``Linear.relprop``): R_i = x+_i sum_j w+_ji s_j + x-_i sum_j w-_ji s_j, s = r / z+."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = _safe_div(r, F.linear(xp, wp) + F.linear(xn, wn))
    return xp * (s @ wp) + xn * (s @ wn)


def _add_rule(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add a + b: z-rule split, then each branch rescaled so that the branch totals are
    |sum a_i s_i| / (|.| + |.|) of the total (Chefer's ``Add.relprop``), per sample."""
    s = _safe_div(r, a + b)
    ra, rb = a * s, b * s
    sa, sb = ra.flatten(1).sum(1), rb.flatten(1).sum(1)
    tot = r.flatten(1).sum(1)
    den = sa.abs() + sb.abs()
    fa, fb = _safe_div(sa.abs(), den) * tot, _safe_div(sb.abs(), den) * tot
    shape = (-1,) + (1,) * (r.ndim - 1)
    return ra * _safe_div(fa, sa).view(shape), rb * _safe_div(fb, sb).view(shape)


def _matmul_rule(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z = a @ b: z-rule over both operands, each halved (Chefer's ``einsum.relprop`` / 2)."""
    s = _safe_div(r, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


def _check_lrp_model(m: nn.Module) -> VisionTransformer:
    if not isinstance(m, VisionTransformer):
        raise ConfigError(f"Chefer LRP propagates through medxai's VisionTransformer itself, got {type(m).__name__}")
    if m.cls_token is None:
        raise ConfigError("Chefer LRP reads the CLS row: this ViT has no class token")
    if not isinstance(m.head, nn.Linear):
        raise ConfigError("Chefer LRP needs a linear classifier head (num_classes > 0)")
    for blk in m.blocks:
        if not isinstance(blk.attn, Attention):
            raise ConfigError("Chefer LRP needs medxai ViT Attention modules in every block")
    return m


def _forward_record(m: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The ViT's forward written out (same modules, same order: ``VisionTransformer.forward``),
    recording what the relevance rules need. Differentiable: the probabilities ``A`` stay in
    the graph when ``x`` requires grad."""
    grid = m.grid_size(tuple(x.shape[-2:]))
    xn = m.normalize(x)
    tok = m.patch_embed(xn)
    pos = m.pos_embed
    if grid != m.patch_embed.grid_size:
        pos = resample_pos_embed(pos, grid, m.patch_embed.grid_size, 0 if m.no_embed_class else m.num_prefix_tokens)
    prefix = torch.cat([t.expand(x.shape[0], -1, -1) for t in (m.cls_token, m.reg_token) if t is not None], 1)
    if m.no_embed_class:
        add_a, add_b = tok, pos
        h = torch.cat([prefix, tok + pos], dim=1)
    else:
        add_a, add_b = torch.cat([prefix, tok], dim=1), pos
        h = add_a + add_b
    h = m.norm_pre(m.pos_drop(h))
    blocks = []
    for blk in m.blocks:
        at = blk.attn
        b, n, c = h.shape
        n1 = blk.norm1(h)
        qkv = at.qkv(n1).reshape(b, n, 3, at.num_heads, at.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        qs = q * at.scale
        a = (qs @ k.transpose(-2, -1)).softmax(dim=-1)
        o = at.attn_drop(a) @ v
        ctx = o.transpose(1, 2).reshape(b, n, c)
        ya = blk.drop_path1(blk.ls1(at.proj_drop(at.proj(ctx))))
        mid = h + ya
        n2 = blk.norm2(mid)
        hid = blk.mlp.norm(blk.mlp.drop1(blk.mlp.act(blk.mlp.fc1(n2))))
        ym = blk.drop_path2(blk.ls2(blk.mlp.drop2(blk.mlp.fc2(hid))))
        blocks.append({"x": h, "n1": n1, "qs": qs, "k": k, "v": v, "A": a, "ctx": ctx, "ya": ya, "mid": mid,
                       "n2": n2, "hid": hid, "ym": ym})
        h = mid + ym
    feats = m.norm(h)
    p = m.num_prefix_tokens
    pooled = feats[:, p:].mean(dim=1) if m.global_pool == "avg" else feats[:, 0]
    z = m.head_drop(m.fc_norm(pooled))
    logits = m.head(z)
    rec = {"xn": xn, "add_a": add_a, "add_b": add_b, "blocks": blocks, "feats": feats, "pooled": pooled, "z": z,
           "grid": grid}
    return logits, rec


def _bounds(m: VisionTransformer, xn: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower/upper input bounds for the z^B rule, broadcastable to (B, C, H, W)."""
    b = xn.shape[0]
    if how == "data":  # Chefer's Conv2d.relprop: min / max of each normalised input
        flat = xn.flatten(1)
        return flat.amin(1).view(b, 1, 1, 1), flat.amax(1).view(b, 1, 1, 1)
    c = xn.shape[1]
    ones = torch.ones(1, c, 1, 1, dtype=xn.dtype, device=xn.device)
    return m.normalize(0 * ones), m.normalize(ones)  # the images of pixel values 0 and 1


def _patch_zb(m: VisionTransformer, xn: torch.Tensor, r_tok: torch.Tensor, bounds: str) -> torch.Tensor:
    """z^B rule on the patch projection (a linear map of each p x p patch, bias excluded):
    R_i = sum_j (x_i w_ji - l_i w+_ji - h_i w-_ji) r_j / z_j  -> (B, C, H, W)."""
    p = m.patch_size
    w = m.patch_embed.proj.weight.flatten(1)  # (D, C p p)
    lo, hi = _bounds(m, xn, bounds)
    lo, hi = lo.expand_as(xn), hi.expand_as(xn)
    unf = [F.unfold(t, p, stride=p).transpose(1, 2) for t in (xn, lo, hi)]  # (B, N, C p p)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = F.linear(unf[0], w) - F.linear(unf[1], wp) - F.linear(unf[2], wn)
    s = _safe_div(r_tok, z)
    rel = unf[0] * (s @ w) - unf[1] * (s @ wp) - unf[2] * (s @ wn)
    return F.fold(rel.transpose(1, 2), xn.shape[-2:], p, stride=p)


def _relevance_pass(m: VisionTransformer, rec: dict, r_out: torch.Tensor, *, stop_block: int = 0,
                    to_input: bool = False, bounds: str = "data",
                    on_attn: Callable[[int, torch.Tensor], None] | None = None,
                    trace: LRPTrace | None = None) -> None:
    """Propagate output relevance (B, K) down the recorded forward (no grad). ``on_attn(l, R_A)``
    gets each block's (B, heads, N, N) attention relevance, from the last block down to
    ``stop_block`` (or to block 0 and the input pixels with ``to_input``)."""
    def note(name: str, r: torch.Tensor) -> None:
        if trace is not None:
            trace.sums[name] = r.flatten(1).sum(1)

    p = m.num_prefix_tokens
    note("output", r_out)
    r_z = _linear_rule(rec["z"], m.head.weight, r_out)  # head_drop, fc_norm: pass through
    note("head.in", r_z)
    feats = rec["feats"]
    r = torch.zeros_like(feats)
    if m.global_pool == "avg":  # mean pooling by the z-rule
        n = feats.shape[1] - p
        r[:, p:] = feats[:, p:] / n * _safe_div(r_z, rec["pooled"])[:, None]
    else:
        r[:, 0] = r_z
    note("tokens", r)  # final norm: pass through
    depth = len(m.blocks)
    last = 0 if to_input else stop_block
    for li in range(depth - 1, last - 1, -1):
        blk, s = m.blocks[li], rec["blocks"][li]
        at = blk.attn
        note(f"blocks.{li}.out", r)
        r_mid, r_ym = _add_rule(s["mid"], s["ym"], r)  # ls2, drop_path2, drop2: pass through
        note(f"blocks.{li}.mlp.out", r_ym)
        r_hid = _linear_rule(s["hid"], blk.mlp.fc2.weight, r_ym)
        note(f"blocks.{li}.mlp.hidden", r_hid)
        r_n2 = _linear_rule(s["n2"], blk.mlp.fc1.weight, r_hid)  # GELU, dropout: pass through
        note(f"blocks.{li}.mlp.in", r_n2)
        r_mid = r_mid + r_n2  # norm2: pass through; the fork sums
        note(f"blocks.{li}.mid", r_mid)
        r_x, r_ya = _add_rule(s["x"], s["ya"], r_mid)
        note(f"blocks.{li}.attn.out", r_ya)
        r_ctx = _linear_rule(s["ctx"], at.proj.weight, r_ya)
        note(f"blocks.{li}.attn.ctx", r_ctx)
        b, n, c = r_ctx.shape
        r_o = r_ctx.reshape(b, n, at.num_heads, at.head_dim).transpose(1, 2)
        r_a, r_v = _matmul_rule(s["A"], s["v"], r_o)
        note(f"blocks.{li}.attn.probs", r_a)
        note(f"blocks.{li}.attn.v", r_v)
        if trace is not None:
            trace.attn[li] = r_a
        if on_attn is not None:
            on_attn(li, r_a)
        if li == last and not to_input:
            break
        r_q, r_k = _matmul_rule(s["qs"], s["k"].transpose(-2, -1), r_a)  # softmax: pass through
        r_k = r_k.transpose(-2, -1)
        note(f"blocks.{li}.attn.qk", r_q + r_k)
        r_qkv = torch.stack([r_q, r_k, r_v], 0).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * c)
        r_n1 = _linear_rule(s["n1"], at.qkv.weight, r_qkv)
        note(f"blocks.{li}.attn.in", r_n1)
        r = r_x + r_n1  # norm1: pass through; the fork sums
        note(f"blocks.{li}.in", r)
    if not to_input:
        return
    # embedding: pos_drop / norm_pre pass through; the position add split as a residual add
    if m.no_embed_class:
        r_pre = r[:, :p]
        r_tok, r_pos = _add_rule(rec["add_a"], rec["add_b"].expand_as(rec["add_a"]), r[:, p:])
    else:
        r_all, r_pos = _add_rule(rec["add_a"], rec["add_b"].expand_as(rec["add_a"]), r)
        r_pre, r_tok = r_all[:, :p], r_all[:, p:]
    note("embed.out", r)
    note("embed.pos", r_pos)
    note("embed.prefix", r_pre)
    note("embed.patches", r_tok)
    rel = _patch_zb(m, rec["xn"], r_tok, bounds)  # the normalisation is elementwise: pass through
    note("input", rel)
    if trace is not None:
        trace.input = rel


def vit_lrp(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, *, bounds: str = "data",
            keep_attention: bool = True) -> LRPTrace:
    """Chefer 2021a's LRP through a medxai ViT down to the input pixels, for one target per sample.

    x (B, C, H, W) in [0, 1]; targets (B,). Relevance starts as one-hot 1 at each sample's target
    logit (as Chefer's code) and follows definitions.md section 1: linear layers alpha=1 beta=0
    without bias; patch embedding z^B with ``bounds`` "data" (each normalised image's min / max,
    Chefer's code) or "domain" (the images of pixel values 0 and 1); GELU, softmax, LayerNorm,
    dropout, LayerScale pass through; QK^T and AV by the z-rule over both operands, halved;
    residual adds by the z-rule rescaled to keep |sum| per branch; forks sum. Divisions by an
    exact zero give 0. The caller's model should be in eval mode (``preserve_model``).
    Returns an ``LRPTrace`` (sums per stage, attention relevances, input relevance).

    Conservation: every rule above keeps the per-sample total (the linear and z-rules lose only
    outputs whose denominator is exactly 0), so each stage's total equals the one above it; the
    tests hold it to 1e-9 in float64 and 2e-4 in float32 (cancellations in the signed z-rules).
    Not all of it reaches the pixels: the position embeddings and the CLS / register tokens take
    their share at the embedding add (``sums["embed.pos"]``, ``sums["embed.prefix"]``).
    """

    m = _check_lrp_model(model)
    if bounds not in BOUNDS:
        raise ConfigError(f"bounds must be one of {BOUNDS}, got {bounds!r}")
    with torch.no_grad():
        logits, rec = _forward_record(m, x)
        t = torch.as_tensor(targets, device=x.device).long().view(-1)
        check_target_range(t, logits.shape[1])
        r_out = F.one_hot(t, logits.shape[1]).to(logits.dtype)
        trace = LRPTrace(attn=[None] * len(m.blocks))
        _relevance_pass(m, rec, r_out, to_input=True, bounds=bounds, trace=trace)
    if not keep_attention:
        trace.attn = [None] * len(m.blocks)
    return trace
