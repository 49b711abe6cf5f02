"""CAM variants beyond Grad-CAM(++): HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM, FullGrad.

Each layer CAM is a small ``_CAMBase`` subclass (``explain/cam.py``) that says how to weight the
channels (or the activations elementwise), so all take ``layer`` (one or a list), ``relu``,
``upsample``, ``aug_smooth``, ``eigen_smooth`` and ``reshape``. ScoreCAM and AblationCAM put their
B x K perturbed forwards through the engine (``perturbed_outputs``: memory-bounded chunks, halved
on GPU out-of-memory, no gradients). FullGrad is not a layer CAM: it sums input- and bias-gradients
over the whole network. Definitions: ``definitions.md`` section 1 and the papers named below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medxai.errors import ConfigError
from medxai.explain.base import TargetSpec, select_output
from medxai.explain.cam import LayerState, _CAMBase, minmax_maps, upsample_maps
from medxai.explain.engine import DEFAULT_MEMORY_BUDGET, perturbed_outputs
from medxai.explain.gradient import GradientAttribution
from medxai.explain.registry import REGISTRY

__all__ = ["AblationCAM", "EigenCAM", "FullGrad", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM"]


@REGISTRY.register("hirescam")
class HiResCAM(_CAMBase):
    """HiResCAM (Draelos & Carin 2020, eq. 4): ``M = relu(sum_k g^k * A^k)`` elementwise, g = d f_c / d A.

    Shapes as ``GradCAM``: (B, [T,] 1, H, W), or (B, [T,] 1, h, w) with ``upsample=False``.
    """

    def weighted(self, s: LayerState) -> torch.Tensor:
        return s.g * s.a[:, None]


@REGISTRY.register("xgradcam")
class XGradCAM(_CAMBase):
    """XGrad-CAM (Fu et al. 2020, eq. 15): ``w_k = sum_ij A^k_ij g^k_ij / (sum_ij A^k_ij + 1e-7)``,
    ``M = relu(sum_k w_k A^k)`` (eps as pytorch-grad-cam). Shapes as ``GradCAM``."""

    eps = 1e-7

    def weights(self, s: LayerState) -> torch.Tensor:
        return (s.a[:, None] * s.g).flatten(3).sum(-1) / (s.a.flatten(2).sum(-1)[:, None] + self.eps)


@REGISTRY.register("layercam")
class LayerCAM(_CAMBase):
    """LayerCAM (Jiang et al. 2021, eq. 5 - 6): ``M = relu(sum_k relu(g^k) * A^k)`` elementwise.
    Shapes as ``GradCAM``."""

    def weighted(self, s: LayerState) -> torch.Tensor:
        return s.g.clamp(min=0) * s.a[:, None]


@REGISTRY.register("eigencam")
class EigenCAM(_CAMBase):
    """Eigen-CAM (Muhammad & Yeasin 2020, eq. 4 - 5): the activations projected on their first
    principal component (``cam.first_component``: centred per channel, sign flipped where
    |min| > max), ReLU'd. No gradient and no target: every target of a sample gets the same map.
    Shapes as ``GradCAM``."""

    uses_gradients = False
    eigen = True

    def weighted(self, s: LayerState) -> torch.Tensor:
        return s.a[:, None]


class _PerturbedCAM(_CAMBase):
    """A gradient-free CAM whose weights come from B x K perturbed forwards through the engine."""

    uses_gradients = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | Sequence[str | nn.Module] | None = None, *,
                 batch_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET, **kw) -> None:
        super().__init__(model, layer, **kw)
        self.batch_size, self.memory_budget = batch_size, memory_budget

    def _outputs(self, s: LayerState, make) -> torch.Tensor:
        """(B, T, K): the target outputs of the K perturbed copies of each sample."""
        out = perturbed_outputs(self.model, s.x, s.a.shape[1], make, s.targets, output=self.output,
                                batch_size=self.batch_size, memory_budget=self.memory_budget)
        return out.transpose(1, 2)


@REGISTRY.register("scorecam")
class ScoreCAM(_PerturbedCAM):
    """Score-CAM (Wang et al. 2020, eq. 5 - 8, pytorch-grad-cam's weighting): each channel's activation
    upsampled to the input (bilinear / trilinear, align_corners=False; pytorch-grad-cam aligns corners)
    and min-max normalised, ``H^k = (A^k - min) / (max - min + 1e-8)``, masks the input;
    ``w = softmax_k f_c(x * H^k)`` (softmax over the K channels of the explained output, no baseline
    subtracted), ``M = relu(sum_k w_k A^k)``. Masks are built per chunk from the low-resolution
    activations (memory: one chunk of masked images). Shapes as ``GradCAM``; ``batch_size``
    (images per model call) / ``memory_budget`` (bytes) bound the chunks.
    """

    eps = 1e-8

    def weights(self, s: LayerState) -> torch.Tensor:
        size = s.x.shape[2:]

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            h = upsample_maps(s.a[si, pi][:, None, None], size)[:, 0]  # (M, 1, *X)
            flat = h.flatten(1)
            lo, hi = flat.amin(1), flat.amax(1)
            h = (h - lo.view(-1, *[1] * (h.ndim - 1))) / (hi - lo + self.eps).view(-1, *[1] * (h.ndim - 1))
            return s.x[si] * h

        return torch.softmax(self._outputs(s, make), dim=-1)


def _channel_index(s: LayerState) -> torch.Tensor:
    """(K, S) flat positions in one sample's raw layer output of each grid channel's elements
    (found by passing an index tensor through the grid transform)."""
    n = s.raw[0].numel()
    idx = s.grid(torch.arange(n, dtype=torch.float64, device=s.raw.device).view(1, *s.raw.shape[1:]))[0]
    if not torch.equal(idx, idx.round()) or idx.shape[0] != s.a.shape[1]:
        raise ConfigError("AblationCAM needs a reshape that only moves elements (a permutation / view)")
    return idx.flatten(1).long()


@REGISTRY.register("ablationcam")
class AblationCAM(_PerturbedCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020, eq. 3): ``w_k = (y_c - y_c^k) / y_c`` with y_c^k the explained
    output when channel k of the layer is set to 0, ``M = relu(sum_k w_k A^k)``. y_c = 0 gives
    Inf / NaN weights (the ratio is undefined), returned as such.

    Batched: each chunk of (sample, channel) pairs runs its distinct samples through the model once,
    and a forward hook on the layer expands its output to one ablated copy per pair (the layers
    before it are not recomputed per channel); the model after the layer must treat samples
    independently, and the layer must be called once per forward. Shapes as ``GradCAM``.
    """

    def weights(self, s: LayerState) -> torch.Tensor:
        idx = _channel_index(s)
        cur: dict = {}

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            u = torch.unique_consecutive(si)
            cur["rows"], cur["pi"] = torch.searchsorted(u, si), pi
            return s.x[u]

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
            rows, pi = cur["rows"], cur["pi"]
            rep = out[rows].flatten(1)  # the gather is a copy: zeroing it leaves ``out`` alone
            rep[torch.arange(len(pi), device=rep.device)[:, None], idx[pi]] = 0
            return rep.view(len(pi), *out.shape[1:])

        handle = s.layer.register_forward_hook(hook)
        try:
            ablated = self._outputs(s, make)
        finally:
            handle.remove()
        y = s.scores[..., None]
        return (y - ablated) / y


def _bias_of(m: nn.Module) -> torch.Tensor | None:
    """The bias a conv / BatchNorm layer adds per channel (K,), or None.

    BatchNorm in eval mode computes ``gamma (z - mu) / sqrt(var + eps) + beta``: its effective bias is
    ``beta - gamma mu / sqrt(var + eps)`` (gamma = 1, beta = 0 without affine parameters).
    """
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return None if m.bias is None else m.bias.detach()
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is None:
            raise ConfigError("FullGrad needs BatchNorm layers with running statistics (eval-mode affine maps)")
        gamma = m.weight.detach() if m.weight is not None else torch.ones_like(m.running_mean)
        beta = m.bias.detach() if m.bias is not None else torch.zeros_like(m.running_mean)
        return beta - gamma * m.running_mean / torch.sqrt(m.running_var + m.eps)
    return None


@REGISTRY.register("fullgrad")
class FullGrad(GradientAttribution):
    """FullGrad (Srinivas & Fleuret 2019, eq. 4): ``S = psi(|df/dx * x|) + sum_l sum_c psi(|df/dz_l^c * b_l^c|)``.

    Bias-carrying layers: every Conv1d/2d/3d with a bias and every BatchNorm (its effective bias
    ``beta - gamma mu / sqrt(var + eps)``), whose output z has the input's rank; Linear biases have no
    spatial extent and are left out (as the authors' code does). psi: absolute value, upsampling to the
    input (bilinear / trilinear, align_corners=False), per-map min-max to [0, 1] (a constant map gives
    0). The input term is rescaled over the whole sample (C, H, W) then summed over colour channels (the
    authors' code); each bias term per channel c (eq. 4's sum over c; as pytorch-grad-cam, which rescales
    before it resizes). Returns (B, [T,] 1, H, W), unnormalised. One forward, T backwards to the input.
    """
    image_ndims = (4,)  # volumes: not checked yet

    default_reduce = None
    needs_hooks = True

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        layers = [(m, b) for m in self.model.modules() if (b := _bias_of(m)) is not None]
        outs: list = [None] * len(layers)

        def make(i: int):
            def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
                outs[i] = out
                return out.clone()  # the model's in-place ops (ReLU) act on the copy
            return hook

        handles = [m.register_forward_hook(make(i)) for i, (m, _) in enumerate(layers)]
        xg = x.detach().requires_grad_(True)
        try:
            with torch.enable_grad():
                logits = self.model(xg)
        finally:
            for h in handles:
                h.remove()
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, self.output).gather(1, targets)
        keep = [i for i, o in enumerate(outs) if o is not None and o.ndim == x.ndim and o.requires_grad]
        maps = []
        for t in range(scores.shape[1]):
            gs = torch.autograd.grad(scores[:, t].sum(), [xg, *[outs[i] for i in keep]],
                                     retain_graph=t < scores.shape[1] - 1)
            maps.append(self._saliency(x, gs[0], [(layers[i][1], g) for i, g in zip(keep, gs[1:], strict=True)]))
        return torch.stack(maps, 1).to(x.dtype)

    @staticmethod
    def _saliency(x: torch.Tensor, gx: torch.Tensor, terms: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        """(B, 1, *X) from the input gradient and the (bias (K,), d f / d z (B, K, *S)) of each layer."""
        size = x.shape[2:]
        sal = minmax_maps((gx * x).abs(), 1).sum(1, keepdim=True)
        for bias, g in terms:
            z = (g * bias.view(1, -1, *[1] * (g.ndim - 2))).abs()
            sal = sal + minmax_maps(upsample_maps(z[:, None], size)[:, 0]).sum(1, keepdim=True)
        return sal
