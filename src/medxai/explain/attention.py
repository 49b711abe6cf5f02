"""Attention explanations for ViTs: raw attention, rollout, Chefer 2021b and Chefer 2021a (LRP).

All four work on batches with per-sample targets and return (B, [T,] 1, H, W) maps (the patch
grid upsampled to the image, bilinear by default; ``upsample="nearest"`` reproduces the ViT medical
study, whose 16 x 16 ties inflate the pointing game; ``upsample=False`` keeps the (gh, gw) grid).
The attention probabilities come from ``medxai.models.capture_attention`` (the explicit softmax
path, restored on exit), so fused kernels are no obstacle. Only the CLS row of each rolled-out
matrix is needed, so products are accumulated as row vectors from the last block down
(``r <- r B_l``): O(N^2) per block instead of the reference code's O(N^3) matrix products.
Definitions: ``definitions.md`` section 1, "Attention maps for ViTs".

- ``RawAttention``: A_L[CLS, patches] of one block, heads fused (mean / max / min).
- ``AttentionRollout`` (Abnar & Zuidema 2020): B_l = (A_l + I) / rowsum, R = B_L ... B_1.
- ``CheferGeneric`` (Chefer et al. 2021b, ICCV): R = I; R <- R + mean_h(relu(dA * A)) R.
- ``CheferLRP`` (Chefer et al. 2021a, CVPR): R_A from LRP through the ViT (``vit_lrp``, in ``vit_lrp.py``),
  cam = mean_h(relu(dA * R_A)), R = prod (cam + I) without row normalisation.

Raw attention and rollout do not depend on the target: the same map is returned for every target.
Grad-CAM on ViT tokens is ``medxai.explain.GradCAM`` (default layer: the last block's norm1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain.base import TargetSpec, select_output
from medxai.explain.gradient import GradientAttribution
from medxai.explain.lrp_vit import _check_lrp_model, _forward_record, _relevance_pass
from medxai.explain.registry import REGISTRY
from medxai.models.vit import Attention, VisionTransformer, capture_attention

__all__ = [
    "AttentionRollout",
    "CheferGeneric",
    "CheferLRP",
    "RawAttention",
    "fuse_heads",
]

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the mean, max or min over heads."""
    if how == "mean":
        return attn.mean(1)
    if how == "max":
        return attn.amax(1)
    if how == "min":
        return attn.amin(1)
    raise ConfigError(f"head_fusion must be one of {HEAD_FUSIONS}, got {how!r}")


def _find_vit(model: nn.Module) -> VisionTransformer:
    if isinstance(model, VisionTransformer):
        vit = model
    else:
        found = [m for m in model.modules() if isinstance(m, VisionTransformer)]
        if len(found) != 1:
            raise ConfigError(f"{type(model).__name__} is not a medxai VisionTransformer and does not hold exactly "
                              f"one ({len(found)} found): attention maps need medxai.models' ViT")
        vit = found[0]
    if vit.cls_token is None:
        raise ConfigError("attention maps read the CLS row: this ViT has no class token")
    return vit


def _upsample_mode(upsample: bool | str | None) -> str | None:
    if upsample is True:
        return "bilinear"
    if upsample is False or upsample is None:
        return None
    if upsample in ("bilinear", "nearest"):
        return upsample
    raise ConfigError(f"upsample must be True/'bilinear', 'nearest' or False, got {upsample!r}")


class _AttentionMethod(GradientAttribution):
    """Shared: ViT lookup, target resolution from the explaining forward, grid and upsampling."""
    image_ndims = (4,)  # ViT token maps are 2-D

    default_reduce = None  # one channel

    def __init__(self, model: nn.Module, *, output: str = "logit", upsample: bool | str = True) -> None:
        super().__init__(model, output=output)
        self.vit = _find_vit(model)
        self.upsample = upsample
        self._mode = _upsample_mode(upsample)

    def _attention(self, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One forward with captured probabilities; with ``grad`` they stay in an autograd graph
        (the input is made a leaf, since the parameters are frozen)."""
        n_attn = sum(isinstance(m, Attention) for m in self.model.modules())
        xin = x.detach().requires_grad_(True) if grad else x
        with capture_attention(self.model) as store, torch.set_grad_enabled(grad):
            logits = self.model(xin)
        if len(store) != n_attn:
            raise ConfigError(f"the forward pass called attention {len(store)} times for {n_attn} blocks")
        return logits, list(store)

    def _finish(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """CLS rows (B, T, N) -> (B, T, 1, gh, gw) patch maps, upsampled to x's size if asked."""
        p = self.vit.num_prefix_tokens
        gh, gw = self.vit.grid_size(tuple(x.shape[-2:]))
        patches = rows[..., p:]
        if patches.shape[-1] != gh * gw:
            raise InputError(f"{patches.shape[-1]} patch tokens do not fill a {gh}x{gw} grid")
        maps = patches.reshape(*rows.shape[:2], 1, gh, gw)
        if self._mode is not None and (gh, gw) != tuple(x.shape[-2:]):
            kw = {"align_corners": False} if self._mode == "bilinear" else {}
            maps = F.interpolate(maps.flatten(0, 1), size=tuple(x.shape[-2:]), mode=self._mode,
                                 **kw).unflatten(0, maps.shape[:2])
        return maps.to(x.dtype)


@REGISTRY.register("raw_attention")
class RawAttention(_AttentionMethod):
    """Raw attention of one block: A[CLS, patches], heads fused, on the patch grid.

    ``RawAttention(model, layer=-1, head_fusion="mean" | "max" | "min", upsample=True)``;
    ``attribute(x, target)`` -> (B, [T,] 1, H, W) (the same map for every target). The ViT study
    used layer 11 (the last of ViT-B), mean over heads and nearest upsampling (``upsample="nearest"``).
    """

    needs_grad = False

    def __init__(self, model: nn.Module, layer: int = -1, head_fusion: str = "mean", *, output: str = "logit",
                 upsample: bool | str = True) -> None:
        super().__init__(model, output=output, upsample=upsample)
        fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)  # validate
        depth = len(self.vit.blocks)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise ConfigError(f"layer must be an int in [{-depth}, {depth - 1}], got {layer!r}")
        self.layer, self.head_fusion = layer, head_fusion

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        logits, attns = self._attention(x, grad=False)
        targets = spec.resolve(logits, x.shape[0])
        row = fuse_heads(attns[self.layer], self.head_fusion)[:, 0]  # (B, N)
        return self._finish(row[:, None].expand(-1, targets.shape[1], -1), x)


def rollout_row(mats: list[torch.Tensor], normalize: bool, row: int = 0) -> torch.Tensor:
    """Row ``row`` of prod_l (M_l + I) (last matrix leftmost), (B, N) from (B, N, N) matrices in
    block order; ``normalize`` divides each (M_l + I) by its row sums (Abnar & Zuidema)."""
    b, n = mats[0].shape[0], mats[0].shape[-1]
    r = torch.zeros(b, 1, n, dtype=mats[0].dtype, device=mats[0].device)
    r[:, 0, row] = 1
    for m in reversed(mats):
        if normalize:
            m = m + torch.eye(n, dtype=m.dtype, device=m.device)
            r = torch.bmm(r, m / m.sum(-1, keepdim=True))
        else:
            r = r + torch.bmm(r, m)
    return r[:, 0]


def _discard(a: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the floor(N^2 * ratio) smallest entries of each sample's fused map (ties: lowest flat
    index first); the [CLS, CLS] entry is never zeroed (as jacobgil's vit-explain)."""
    b, n, _ = a.shape
    k = int(n * n * ratio)
    if k == 0:
        return a
    flat = a.reshape(b, n * n)
    idx = torch.sort(flat, dim=1, stable=True).indices[:, :k]
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    drop[:, 0] = False
    return torch.where(drop, torch.zeros((), dtype=a.dtype, device=a.device), flat).view(b, n, n)


@REGISTRY.register("rollout", "attention_rollout")
class AttentionRollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema 2020): ``A_l`` = heads fused, optionally the lowest
    ``discard_ratio`` of its entries zeroed (jacobgil's variant, [CLS, CLS] kept);
    ``B_l = (A_l + I) / rowsum``; ``R = B_L ... B_{start_layer+1}``; map = R[CLS, patches].

    ``AttentionRollout(model, head_fusion="mean", discard_ratio=0.0, start_layer=0, upsample=True)``
    -> (B, [T,] 1, H, W), the same map for every target.
    """

    needs_grad = False

    def __init__(self, model: nn.Module, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 start_layer: int = 0, *, output: str = "logit", upsample: bool | str = True) -> None:
        super().__init__(model, output=output, upsample=upsample)
        fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        _check_start(start_layer, len(self.vit.blocks))
        self.head_fusion, self.discard_ratio, self.start_layer = head_fusion, float(discard_ratio), start_layer

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        logits, attns = self._attention(x, grad=False)
        targets = spec.resolve(logits, x.shape[0])
        mats = [_discard(fuse_heads(a, self.head_fusion), self.discard_ratio) for a in attns[self.start_layer:]]
        row = rollout_row(mats, normalize=True)
        return self._finish(row[:, None].expand(-1, targets.shape[1], -1), x)


def _check_start(start_layer: int, depth: int) -> None:
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < depth:
        raise ConfigError(f"start_layer must be an int in [0, {depth - 1}], got {start_layer!r}")


def _grads(score: torch.Tensor, attns: list[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    gs = torch.autograd.grad(score, attns, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g for g, a in zip(gs, attns, strict=True)]


def _gradcam_attn(grad: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """mean over heads of relu(grad * rel): (B, heads, N, N) -> (B, N, N)."""
    return (grad * rel).clamp(min=0).mean(1)


@REGISTRY.register("chefer_generic", "chefer")
class CheferGeneric(_AttentionMethod):
    """Generic attention explainability (Chefer, Gur & Wolf 2021b, ICCV), self-attention rules:
    ``R = I``; per block ``cam = mean_heads(relu(dA * A))`` with ``dA`` = d(explained output) /
    d(attention probabilities); ``R = R + cam @ R``; map = R[CLS, patches].

    ``CheferGeneric(model, output="logit", upsample=True)`` -> (B, [T,] 1, H, W). One forward,
    one gradient to the attention maps per target (``torch.autograd.grad``, no parameter grads).
    """

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        logits, attns = self._attention(x, grad=True)
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, self.output).gather(1, targets)
        rows = []
        n_t = targets.shape[1]
        for t in range(n_t):
            grads = _grads(scores[:, t].sum(), attns, retain=t < n_t - 1)
            with torch.no_grad():
                cams = [_gradcam_attn(g, a.detach()) for g, a in zip(grads, attns, strict=True)]
                rows.append(rollout_row(cams, normalize=False))
            del grads
        return self._finish(torch.stack(rows, 1), x)


@REGISTRY.register("chefer_lrp", "transformer_attribution")
class CheferLRP(_AttentionMethod):
    """Transformer attribution (Chefer, Gur & Wolf 2021a, CVPR): per block the LRP relevance R_A
    of the attention probabilities (``vit_lrp``'s rules) and the gradient dA of the explained
    output; ``cam_l = mean_heads(relu(dA * R_A))``; ``R = (cam_L + I) ... (cam_s + I)`` without
    row normalisation, s = ``start_layer`` (0 or 1 in Chefer's code); map = R[CLS, patches].

    ``CheferLRP(model, start_layer=0, output="logit", upsample=True)`` -> (B, [T,] 1, H, W).
    Relevance starts as one-hot 1 at the target logit (Chefer's code) whatever ``output`` says;
    ``output`` selects what dA differentiates. One differentiable forward (explicit, recording
    activations), then per target one gradient to the attention maps and one relevance pass
    that stops at block ``start_layer``; batched over samples with per-sample targets.
    """

    def __init__(self, model: nn.Module, start_layer: int = 0, *, output: str = "logit",
                 upsample: bool | str = True) -> None:
        super().__init__(model, output=output, upsample=upsample)
        _check_lrp_model(model)
        _check_start(start_layer, len(self.vit.blocks))
        self.start_layer = start_layer

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        m = self.vit
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, rec = _forward_record(m, xg)
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, self.output).gather(1, targets)
        attns = [s["A"] for s in rec["blocks"]]
        rows = []
        n_t = targets.shape[1]
        for t in range(n_t):
            grads = _grads(scores[:, t].sum(), attns[self.start_layer:], retain=t < n_t - 1)
            b, n = x.shape[0], attns[0].shape[-1]
            r = torch.zeros(b, 1, n, dtype=logits.dtype, device=x.device)
            r[:, 0, 0] = 1

            def step(li: int, r_a: torch.Tensor, grads: list[torch.Tensor] = grads) -> None:
                nonlocal r
                cam = _gradcam_attn(grads[li - self.start_layer], r_a)
                r = r + torch.bmm(r, cam)

            with torch.no_grad():
                r_out = F.one_hot(targets[:, t], logits.shape[1]).to(logits.dtype)
                _relevance_pass(m, rec, r_out, stop_block=self.start_layer, on_attn=step)
            rows.append(r[:, 0])
            del grads
        return self._finish(torch.stack(rows, 1), x)
