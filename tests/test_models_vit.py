"""ViT: equals an independent functional ViT, fused == explicit attention, attention capture
(values, gradients, restoration also on error), on-the-fly position-embedding resampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import medxai.models as M
from medxai.errors import ConfigError, InputError
from medxai.models.vit import Attention, capture_attention


def _small(**kw):
    torch.manual_seed(0)
    args = {"img_size": 32, "depth": 3} | kw
    m = M.create("vit-ti8", 5, **args).eval()
    with torch.no_grad():  # non-trivial tokens (timm initialises them near zero)
        for p in (m.cls_token, m.pos_embed, getattr(m, "reg_token", None)):
            if p is not None:
                p.normal_(0, 0.5)
    return m


def reference_vit(sd: dict, x: torch.Tensor, *, patch: int, heads: int, depth: int, reg: int = 0,
                  pool: str = "token", mean=None, std=None) -> torch.Tensor:
    """Dosovitskiy 2021 eqs. 1-4 with timm's names, written with explicit loops over heads."""
    x = (x - mean) / std
    b, c = x.shape[:2]
    # patches in row-major order, each flattened as (c, p, p) to match a conv with kernel = stride = p
    pt = x.unfold(2, patch, patch).unfold(3, patch, patch)  # b, c, gh, gw, p, p
    gh, gw = pt.shape[2], pt.shape[3]
    pt = pt.permute(0, 2, 3, 1, 4, 5).reshape(b, gh * gw, c * patch * patch)
    wproj = sd["patch_embed.proj.weight"].reshape(sd["patch_embed.proj.weight"].shape[0], -1)
    tok = pt @ wproj.T + sd["patch_embed.proj.bias"]
    d = tok.shape[-1]
    prefix = [sd["cls_token"].expand(b, 1, d)] + ([sd["reg_token"].expand(b, reg, d)] if reg else [])
    z = torch.cat([*prefix, tok], 1) + sd["pos_embed"]
    hd = d // heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(z, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv = y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        outs = []
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
            outs.append(a @ v[..., sl])
        z = z + torch.cat(outs, -1) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.layer_norm(z, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        z = z + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    if pool == "token":
        f = F.layer_norm(z, (d,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 0]
    else:
        f = F.layer_norm(z[:, 1 + reg:].mean(1), (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return f @ sd["head.weight"].T + sd["head.bias"]


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 4}, {"global_pool": "avg", "in_chans": 1}])
def test_matches_independent_vit(kw) -> None:
    m = _small(**kw)
    cin = kw.get("in_chans", 3)
    x = torch.rand(2, cin, 32, 32)
    ref = reference_vit(m.state_dict(), x, patch=8, heads=3, depth=3, reg=kw.get("reg_tokens", 0),
                        pool=kw.get("global_pool", "token"), mean=m.normalize.mean, std=m.normalize.std)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
        with capture_attention(m):
            torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_fused_equals_explicit_attention() -> None:
    m = _small(reg_tokens=2)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        fused = m(x)
        feats_fused = m.forward_features(x)
        with capture_attention(m):
            explicit = m(x)
            feats_explicit = m.forward_features(x)
    assert (fused - explicit).abs().max() < 1e-5
    assert (feats_fused - feats_explicit).abs().max() < 1e-5


def test_captured_probabilities_values_and_gradients() -> None:
    m = _small()
    x = torch.rand(2, 3, 32, 32)
    normed = []
    hooks = [blk.norm1.register_forward_hook(lambda _m, _i, out: normed.append(out)) for blk in m.blocks]
    try:
        with capture_attention(m) as maps:
            y = m(x)
            assert len(maps) == 3 and all(a.shape == (2, 3, 17, 17) for a in maps)
            grads = torch.autograd.grad(y[:, 1].sum(), maps)
            maps[-1].retain_grad()
            assert maps[-1] is m.blocks[-1].attn.attn_probs
    finally:
        for h in hooks:
            h.remove()
    for i, (a, g) in enumerate(zip(maps, grads, strict=True)):
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 17), rtol=0, atol=1e-6)
        # independent softmax(q k^T / sqrt(d)) from the block's input
        qkv = normed[i] @ m.blocks[i].attn.qkv.weight.T + m.blocks[i].attn.qkv.bias
        q = qkv[..., :192].reshape(2, 17, 3, 64).transpose(1, 2)
        k = qkv[..., 192:384].reshape(2, 17, 3, 64).transpose(1, 2)
        torch.testing.assert_close(a, torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1), rtol=1e-5, atol=1e-6)
        assert g.shape == a.shape and g.abs().sum() > 0
    # the gradient w.r.t. the last map, checked by the chain rule through O = A @ V
    blk = m.blocks[-1]
    v = (normed[-1] @ blk.attn.qkv.weight.T + blk.attn.qkv.bias)[..., 384:].reshape(2, 17, 3, 64).transpose(1, 2)
    # y depends on A only through O = A @ V, so dy/dA = dy/dO @ V^T (dy/dO from the proj input)
    with capture_attention(m) as maps:
        outs = []
        h = blk.attn.register_forward_hook(lambda _m, _i, out: outs.append(out))
        try:
            y = m(x)
        finally:
            h.remove()
        (g_a,) = torch.autograd.grad(y[:, 1].sum(), maps[-1], retain_graph=True)
        (g_out,) = torch.autograd.grad(y[:, 1].sum(), outs[0])
    g_o = (g_out @ blk.attn.proj.weight).reshape(2, 17, 3, 64).transpose(1, 2)
    torch.testing.assert_close(g_a, g_o @ v.transpose(-1, -2).detach(), rtol=1e-4, atol=1e-6)


def _state(m):
    return [(a.fused_attn, a.capture, a.attn_probs) for a in m.modules() if isinstance(a, Attention)]


def test_capture_restores_the_model_also_on_error() -> None:
    m = _small()
    before = _state(m)
    assert all(f is True and c is None and p is None for f, c, p in before)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="boom"), capture_attention(m) as maps:
        m(x)
        assert all(a.fused_attn is False for a in m.modules() if isinstance(a, Attention))
        raise RuntimeError("boom")
    assert len(maps) == 3 and _state(m) == before
    with capture_attention(m) as outer:  # nesting: the inner capture gives the outer one back
        with capture_attention(m) as inner:
            m(x)
        m(x)
    assert len(inner) == 3 and len(outer) == 3 and _state(m) == before
    with pytest.raises(ConfigError, match="Attention"), capture_attention(M.create("resnet8", 2)):
        pass


def test_other_image_sizes_resample_position_embeddings() -> None:
    m = _small()  # configured for 32 px: 4x4 grid
    x = torch.rand(2, 3, 48, 40)  # 6x5 grid
    m2 = M.create("vit-ti8", 5, img_size=(48, 40), depth=3).eval()
    sd = dict(m.state_dict())
    sd["pos_embed"] = M.resample_pos_embed(sd["pos_embed"], (6, 5), (4, 4))
    m2.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x), rtol=1e-5, atol=1e-5)
    tokens = {}
    h = m.get_submodule(m.default_cam_layer).register_forward_hook(lambda _m, _i, out: tokens.setdefault("t", out))
    try:
        m(x)
    finally:
        h.remove()
    grid = m.tokens_to_grid(tokens["t"], (48, 40))
    assert grid.shape == (2, 192, 6, 5)
    torch.testing.assert_close(grid[:, :, 2, 3], tokens["t"][:, 1 + 2 * 5 + 3])
    with pytest.raises(InputError, match="multiple of the patch size"):
        m(torch.rand(1, 3, 30, 32))


def test_layer_scale_and_register_names_follow_timm() -> None:
    m = M.create("vit-ti16", 2, depth=1, init_values=1e-5, reg_tokens=4)
    sd = m.state_dict()
    assert sd["blocks.0.ls1.gamma"].shape == (192,) and torch.all(sd["blocks.0.ls2.gamma"] == 1e-5)
    assert sd["reg_token"].shape == (1, 4, 192) and sd["pos_embed"].shape == (1, 1 + 4 + 196, 192)
    assert m.num_prefix_tokens == 5
    m2 = M.create("vit-ti16", 2, depth=1, reg_tokens=4, no_embed_class=True)
    assert m2.pos_embed.shape == (1, 196, 192)
    assert m2(torch.rand(1, 3, 32, 32)).shape == (1, 2)
