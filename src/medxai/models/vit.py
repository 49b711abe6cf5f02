"""Vision Transformer (Dosovitskiy 2021) in timm's ``VisionTransformer`` parameter-name layout.

Names: ``cls_token``, ``reg_token`` (optional register tokens, Darcet 2024), ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}``, ``norm``, ``fc_norm`` (global average pooling), ``head``; so timm, DINO and MAE
checkpoints load as they are. Pre-norm blocks, CLS token, learned position embeddings resampled
(bicubic, antialiased, as timm) when the image grid differs from the configured ``img_size``.

Attention runs ``F.scaled_dot_product_attention`` normally. Inside ``capture_attention(model)``
each ``Attention`` computes ``softmax(q k^T * scale)`` explicitly, keeps the probabilities
(B, heads, N, N) in the autograd graph as ``attn.attn_probs`` and appends them, block by block,
to the list the context manager yields (gradients w.r.t. them: ``torch.autograd.grad``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.models._common import set_description
from medxai.models.registry import REGISTRY

__all__ = ["Attention", "Block", "VisionTransformer", "capture_attention", "resample_pos_embed"]


def resample_pos_embed(pos_embed: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int] | None = None,
                       num_prefix_tokens: int = 1, interpolation: str = "bicubic",
                       antialias: bool = True) -> torch.Tensor:
    """Resample (1, prefix + h*w, D) position embeddings to the grid ``new_size`` (timm's
    ``resample_abs_pos_embed``: prefix tokens kept, grid part interpolated in float32,
    bicubic, antialias, align_corners=False). ``old_size`` defaults to a square grid.
    """
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(n_grid)
        if side * side != n_grid:
            raise ConfigError(f"pos_embed has {n_grid} grid tokens: not a square grid, give old_size")
        old_size = (side, side)
    old_size = (int(old_size[0]), int(old_size[1]))
    new_size = (int(new_size[0]), int(new_size[1]))
    if old_size[0] * old_size[1] != n_grid:
        raise ConfigError(f"pos_embed has {n_grid} grid tokens, not {old_size[0]}x{old_size[1]}")
    if new_size == old_size:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: (B, C, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        if size[0] % patch_size or size[1] % patch_size:
            raise ConfigError(f"img_size {size} is not a multiple of patch_size {patch_size}")
        self.img_size = size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size[0]
        if x.shape[-2] % p or x.shape[-1] % p:
            raise InputError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Multi-head self-attention; fused kernel unless ``fused_attn`` is False (then the softmax
    probabilities (B, heads, N, N) are computed explicitly, kept in ``attn_probs`` and appended
    to ``capture`` if that is a list). Both paths compute softmax(q k^T / sqrt(d_head)) v.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused_attn = True
        self.capture: list[torch.Tensor] | None = None
        self.attn_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            self.attn_probs = attn
            if self.capture is not None:
                self.capture.append(attn)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang 2016); identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)) (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT: (B, C, H, W) in [0, 1] -> logits (B, K). H and W must be multiples of the patch size;
    other sizes than ``img_size`` resample the position embeddings on the fly.

    ``global_pool``: "token" (CLS token, default) or "avg" (mean of the patch tokens, with
    ``fc_norm`` instead of ``norm`` unless ``fc_norm`` says otherwise, as timm and MAE).
    Token sequence: [CLS, registers..., patches] (``num_prefix_tokens`` = 1 + registers).
    """

    def __init__(self, normalize: nn.Module, img_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, class_token: bool = True, reg_tokens: int = 0,
                 no_embed_class: bool = False, fc_norm: bool | None = None, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ConfigError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ConfigError("global_pool='token' needs class_token=True")
        self.normalize = normalize
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_reg_tokens = int(reg_tokens)
        self.num_prefix_tokens = int(class_token) + self.num_reg_tokens
        self.no_embed_class = no_embed_class
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        n = self.patch_embed.num_patches + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = nn.Identity()
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values,
                                            proj_drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)])
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:  # timm's default scheme
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def grid_size(self, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Patch grid (rows, cols) for an image of ``image_hw`` pixels (default: ``img_size``)."""
        if image_hw is None:
            return self.patch_embed.grid_size
        return int(image_hw[0]) // self.patch_size, int(image_hw[1]) // self.patch_size

    def tokens_to_grid(self, tokens: torch.Tensor, image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, prefix + h*w, D) token outputs -> (B, D, h, w), CLS and register tokens dropped."""
        gh, gw = self.grid_size(image_hw)
        patches = tokens[:, self.num_prefix_tokens:]
        if patches.shape[1] != gh * gw:
            raise InputError(f"{patches.shape[1]} patch tokens do not fill a {gh}x{gw} grid")
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        if grid != self.patch_embed.grid_size:
            pos = resample_pos_embed(pos, grid, self.patch_embed.grid_size,
                                     0 if self.no_embed_class else self.num_prefix_tokens)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> normalised tokens (B, prefix + h*w, D)."""
        grid = self.grid_size(x.shape[-2:])
        x = self.patch_embed(self.normalize(x))
        x = self.norm_pre(self._pos_embed(x, grid))
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        return self.head(self.head_drop(self.fc_norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Switch every ``Attention`` of ``model`` to the explicit path for the ``with`` body.

    Yields a list that each forward fills with one (B, heads, N, N) probability tensor per block,
    in block order (a second forward appends ``depth`` more; ``clear()`` it between forwards).
    The tensors stay in the autograd graph. On exit, also on error, the fused path, any outer
    capture and ``attn_probs`` are restored.
    """
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    if not mods:
        raise ConfigError(f"{type(model).__name__} has no medxai ViT Attention modules to capture")
    store: list[torch.Tensor] = []
    saved = [(m, m.fused_attn, m.capture, m.attn_probs) for m in mods]
    try:
        for m in mods:
            m.fused_attn = False
            m.capture = store
        yield store
    finally:
        for m, fused, capture, probs in saved:
            m.fused_attn, m.capture, m.attn_probs = fused, capture, probs


# name: (embed_dim, depth, heads, patch, default img_size)
_VITS = {
    "vit-b16": (768, 12, 12, 16, 224),
    "vit-s16": (384, 12, 6, 16, 224),
    "vit-ti16": (192, 12, 3, 16, 224),
    "vit-s8": (384, 12, 6, 8, 128),
    "vit-ti8": (192, 12, 3, 8, 128),
    "vit-s4": (384, 12, 6, 4, 64),
    "vit-ti4": (192, 12, 3, 4, 64),
}


def _vit(name: str, num_classes: int, in_chans: int, normalize: nn.Module, **kw) -> nn.Module:
    from medxai.models.cnn import _call

    dim, depth, heads, patch, img = _VITS[name]
    args = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch, "img_size": img, **kw}
    m = _call(VisionTransformer, name, normalize=normalize, num_classes=num_classes, in_chans=in_chans, **args)
    d = len(m.blocks)
    stages = ["patch_embed"] + [f"blocks.{i}" for i in range(d)]
    stages += [s for s in ("norm", "fc_norm") if isinstance(getattr(m, s), nn.LayerNorm)] + ["head"]
    return set_description(m, family="vit", cam_layer=f"blocks.{d - 1}.norm1", stages=stages,
                           head=["head", "fc_norm"], input_layer="patch_embed.proj", feature_dim=m.embed_dim)


for _n in _VITS:
    REGISTRY.add(_n, lambda num_classes, in_chans, normalize, _n=_n, **kw:
                 _vit(_n, num_classes, in_chans, normalize, **kw))
