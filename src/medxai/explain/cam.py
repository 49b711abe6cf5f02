"""Class activation maps: the CAM base, Grad-CAM (Selvaraju 2017) and Grad-CAM++ (Chattopadhyay 2018, eq. 19).

The target layer's activation A is captured by a forward hook that detaches it into a leaf and
hands the model a copy, so ``torch.autograd.grad`` computes d f_c / d A only (no backward into
the layers before it, no parameter gradients). T targets per sample: one forward, T gradients.
ViT token layers (B, P + N, D) are reshaped to the patch grid after dropping the P prefix tokens
(CLS, registers); ``reshape=`` takes any other transform to (B, K, *spatial) (``channels_last``
for (B, h, w, C) outputs such as Swin's). 2-D (B, K, h, w) and 3-D (B, K, d, h, w) activations
share one code path (bilinear / trilinear upsampling). The other CAM variants are in
``cam_family``. Definitions: ``definitions.md`` section 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain.base import TargetSpec, select_output
from medxai.explain.gradient import GradientAttribution
from medxai.explain.precision import check_precision, precision_context
from medxai.explain.registry import REGISTRY

__all__ = ["GradCAM", "GradCAMPlusPlus", "channels_last", "find_cam_layer", "first_component", "minmax_maps"]

#: test-time augmentations of ``aug_smooth`` (pytorch-grad-cam's ttach set): horizontal flip x multiplier
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple((f, m) for f in (False, True) for m in (1.0, 1.1, 0.9))
_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def find_cam_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The automatic CAM layer: ``model.default_cam_layer`` (a dotted name) if set, else the
    last module (in execution order) whose output has ``x``'s rank ((B, C, h, w) for images,
    (B, C, d, h, w) for volumes) and more than one position, found by one traced no-grad
    forward of ``x[:1]`` (falls back to the last output of that rank)."""
    name = getattr(model, "default_cam_layer", None)
    if name:
        return name, _get(model, name)
    seen: list[tuple[str, int]] = []
    handles = []

    def make(n: str):
        def hook(_m: nn.Module, _i: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == x.ndim:
                seen.append((n, math.prod(out.shape[2:])))
        return hook

    try:
        for n, m in model.named_modules():
            if n:
                handles.append(m.register_forward_hook(make(n)))
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    spatial = [n for n, hw in seen if hw > 1]
    chosen = spatial[-1] if spatial else (seen[-1][0] if seen else None)
    if chosen is None:
        raise ConfigError(f"no module with a {x.ndim}-D (B, C, *spatial) output: give the CAM layer by name")
    return chosen, model.get_submodule(chosen)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise ConfigError(f"the model has no layer {name!r} (last layers: {names})") from None


@contextmanager
def capture_activations(layers: Sequence[nn.Module]) -> Iterator[list[dict]]:
    """Record each layer's output as ``stores[i]["A"]``; the model continues with a copy.

    The first output captured in a forward (and any that does not require grad) is detached into a
    gradient leaf, so no backward runs before it; a later layer's output (which depends on that leaf)
    is kept in the graph, so gradients to every layer are exact. For a module called several times,
    the last call is kept. Hooks removed on exit (also on error).
    """
    stores: list[dict] = [{} for _ in layers]
    fired: list[int] = []

    def make(store: dict):
        def hook(_m: nn.Module, _i: tuple, out: object) -> torch.Tensor:
            if not isinstance(out, torch.Tensor):
                raise ConfigError(f"the CAM layer must output a tensor, got {type(out).__name__}")
            keep = out.requires_grad and bool(fired)
            fired.append(1)
            leaf = out if keep else out.detach().requires_grad_(True)
            store["A"] = leaf
            return leaf.clone()  # a copy: later in-place ops of the model leave A alone
        return hook

    handles = [layer.register_forward_hook(make(s)) for layer, s in zip(layers, stores, strict=True)]
    try:
        yield stores
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_activation(layer: nn.Module) -> Iterator[dict]:
    """``capture_activations`` for one layer: its output as a gradient leaf ``store["A"]``."""
    with capture_activations([layer]) as stores:
        yield stores[0]


def tokens_to_grid(t: torch.Tensor, n_prefix: int | None = None) -> torch.Tensor:
    """(B, P + N, D) tokens -> (B, D, g, g) grid after dropping P prefix tokens.

    ``n_prefix`` None infers P = L - floor(sqrt(L))^2 (the largest square grid that fits: 197 -> 1,
    201 (CLS + 4 registers on 14 x 14) -> 5, 196 -> 0).
    """
    b, length, d = t.shape
    p = length - math.isqrt(length) ** 2 if n_prefix is None else int(n_prefix)
    n = length - p
    g = math.isqrt(max(n, 0))
    if n <= 0 or g * g != n:
        raise InputError(f"cannot reshape {length} tokens minus {p} prefix tokens to a square grid")
    return t[:, p:].transpose(1, 2).reshape(b, d, g, g)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A ``reshape`` for channels-last outputs (B, *spatial, C) (Swin, ConvNeXt blocks) -> (B, C, *spatial)."""
    return t.movedim(-1, 1)


def upsample_maps(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, T, C, *S) -> (B, T, C, *size): linear / bilinear / trilinear, align_corners=False."""
    if tuple(m.shape[3:]) == tuple(size):
        return m
    return F.interpolate(m.flatten(0, 1), size=tuple(size), mode=_MODES[len(size)],
                         align_corners=False).unflatten(0, m.shape[:2])


def minmax_maps(m: torch.Tensor, start_dim: int = 2) -> torch.Tensor:
    """Per-map min-max to [0, 1] over the dims from ``start_dim`` on; a constant map becomes 0."""
    flat = m.flatten(start_dim)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1), 0)
    return out.view(m.shape)


def first_component(w: torch.Tensor) -> torch.Tensor:
    """Projection on the first principal component (Eigen-CAM, Muhammad & Yeasin 2020, eq. 4 - 5).

    ``w`` (N, K, *S): each sample's (S, K) matrix of positions x channels is centred per channel
    (the mean over positions subtracted, as pytorch-grad-cam), its SVD taken, and the positions
    projected on the first right singular vector: (N, 1, *S). Sign: the SVD's is arbitrary, so the
    map is flipped where |min| > max (pytorch-grad-cam's ``get_2d_projection_with_sign_correction``,
    Seg-Eigen-CAM eq. 13; its EigenCAM keeps LAPACK's sign).
    """
    m = w.flatten(2).transpose(1, 2)
    m = m - m.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    p = (m @ vh[:, :1].transpose(1, 2))[..., 0]  # (N, S)
    flip = p.amin(1).abs() > p.amax(1)
    return torch.where(flip[:, None], -p, p).view(w.shape[0], 1, *w.shape[2:])


@dataclass
class LayerState:
    """What a CAM's weighting sees for one layer (B samples, T targets, K channels, S positions)."""

    a: torch.Tensor  #: (B, K, *S) activations on the grid
    g: torch.Tensor | None  #: (B, T, K, *S) d score / d A (None for gradient-free CAMs)
    x: torch.Tensor  #: (B, C, *X) the input the model ran on
    targets: torch.Tensor  #: (B, T)
    scores: torch.Tensor  #: (B, T) the explained outputs at x
    layer: nn.Module
    raw: torch.Tensor  #: the layer's output as the model produced it (B, ...)
    grid: Callable[[torch.Tensor], torch.Tensor]  #: raw layout -> (B, K, *S)


class _CAMBase(GradientAttribution):
    """Owns layers, hooks, targets, upsampling and the options; subclasses say how to weight channels
    (``weights`` -> (B, T, K)) or, for elementwise CAMs, the weighted activations (``weighted``).

    Options (every CAM): ``layer`` a name, a module, None (automatic) or a list of them (each layer's
    ReLU'd map upsampled to the input, min-max normalised per map, then averaged: pytorch-grad-cam's
    rule without its final re-scaling); ``eigen_smooth`` the first principal component of the weighted
    activations instead of their channel sum; ``aug_smooth`` the mean of the maps of the 6 inputs
    {x, flip(x)} x {1.0, 1.1, 0.9} (the flipped maps flipped back; multiplied inputs may exceed 1 and
    are given to the model as they are; targets resolved at x once: pytorch-grad-cam's ttach set,
    but it averages normalised maps, medxai the raw ones); ``reshape`` a transform of the layer's
    output to (B, K, *spatial) (default: tokens (B, P + N, D) to the patch grid, else as is).
    """

    needs_hooks = True
    default_reduce = None  # one channel already
    #: whether the weighting needs d score / d A (a gradient-free CAM runs its forward under no_grad)
    uses_gradients = True
    #: whether the map is always the first principal component (Eigen-CAM)
    eigen = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | Sequence[str | nn.Module] | None = None, *,
                 output: str = "logit", relu: bool = True, upsample: bool = True, aug_smooth: bool = False,
                 eigen_smooth: bool = False, reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, output=output)
        many = isinstance(layer, (list, tuple))
        for one in (layer if many else [layer]):
            if one is not None and not isinstance(one, (str, nn.Module)):
                raise ConfigError(f"layer must be a dotted name, a module, None or a list, got {type(one).__name__}")
        if many and not layer:
            raise ConfigError("layer is an empty list")
        if many and len(layer) > 1 and not upsample:
            raise ConfigError("several CAM layers are fused at the input's resolution: they need upsample=True")
        if reshape is not None and not callable(reshape):
            raise ConfigError(f"reshape must be a callable, got {type(reshape).__name__}")
        self.layer, self.relu, self.upsample = layer, relu, upsample
        self.aug_smooth, self.eigen_smooth, self.reshape = aug_smooth, eigen_smooth, reshape
        self._layers: list[nn.Module] | None = None
        self.precision = check_precision(precision)  # "bf16": weights cast once per explanation (precision.py)

    def layer_modules(self, x: torch.Tensor) -> list[nn.Module]:
        """The target layers (resolved once: by name, given module, or ``find_cam_layer``)."""
        if self._layers is None:
            if isinstance(self.layer, (list, tuple)):
                self._layers = [m if isinstance(m, nn.Module) else _get(self.model, m) for m in self.layer]
            elif isinstance(self.layer, nn.Module):
                self._layers = [self.layer]
            elif isinstance(self.layer, str):
                self._layers = [_get(self.model, self.layer)]
            else:
                self.layer, module = find_cam_layer(self.model, x)
                self._layers = [module]
        return self._layers

    def layer_module(self, x: torch.Tensor) -> nn.Module:
        """The (first) target layer."""
        return self.layer_modules(x)[0]

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw):
        if self.precision == "fp32":
            return super()._explain(x, spec, **kw)
        self.layer_modules(x)  # resolved on the fp32 model
        with precision_context(self.model, self.precision):
            return super()._explain(x, spec, **kw)

    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's output layout (B, ...) -> (B, K, *spatial); float32 under ``precision="bf16"``
        (the channel weights and the weighted sum are computed in fp32)."""
        out = self._layout(t)
        return out.float() if self.precision != "fp32" else out

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        if self.reshape is not None:
            out = self.reshape(t)
            if not isinstance(out, torch.Tensor) or out.ndim < 3 or out.shape[0] != t.shape[0]:
                raise ConfigError(f"reshape must return (B, K, *spatial) for {tuple(t.shape)}, got "
                                  f"{getattr(out, 'shape', type(out).__name__)}")
            return out
        if t.ndim == 3:
            return tokens_to_grid(t, getattr(self.model, "num_prefix_tokens", None))
        if t.ndim < 4:
            raise ConfigError(f"the CAM layer's output has shape {tuple(t.shape)}; need (B, C, *spatial), tokens "
                              "or a reshape")
        return t

    def weights(self, s: LayerState) -> torch.Tensor:
        """Channel weights (B, T, K)."""
        raise NotImplementedError

    def weighted(self, s: LayerState) -> torch.Tensor:
        """Weighted activations (B, T or 1, K, *S); by default ``weights`` x A."""
        w = self.weights(s)
        return w.view(*w.shape, *([1] * (s.a.ndim - 2))) * s.a[:, None]

    def _layer_map(self, s: LayerState) -> torch.Tensor:
        """(B, T, 1, *S): the channel sum of the weighted activations, or their first component."""
        wa = self.weighted(s)
        if self.eigen or self.eigen_smooth:
            cam = first_component(wa.flatten(0, 1)).unflatten(0, wa.shape[:2])
        else:
            cam = wa.sum(2, keepdim=True)
        return cam.expand(cam.shape[0], s.targets.shape[1], *cam.shape[2:])  # gradient-free: T equal maps

    def _forward(self, x: torch.Tensor, spec: TargetSpec, layers: list[nn.Module]):
        with capture_activations(layers) as stores, torch.set_grad_enabled(self.uses_gradients):
            logits = self.model(x)
        if any("A" not in s for s in stores):
            raise ConfigError("a CAM layer was not called in the forward pass")
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, self.output).gather(1, targets)
        leaves = [s["A"] for s in stores]
        grads: list = [None] * len(leaves)
        if self.uses_gradients:
            grads = _layer_gradients(scores, leaves)
        return leaves, grads, targets, scores.detach()

    def _maps(self, x: torch.Tensor, spec: TargetSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward (and T backwards): fused maps (B, T, 1, *X or *S) and the targets (B, T)."""
        layers = self.layer_modules(x)
        leaves, grads, targets, scores = self._forward(x, spec, layers)
        maps = []
        for layer, leaf, g in zip(layers, leaves, grads, strict=True):
            gg = None if g is None else self._grid(g.flatten(0, 1)).unflatten(0, g.shape[:2])
            s = LayerState(self._grid(leaf.detach()), gg, x, targets, scores, layer, leaf.detach(), self._grid)
            if s.a.ndim != x.ndim:  # e.g. a 2.5-D model: a 2-D layer inside a volume model
                raise ConfigError(f"the CAM layer's grid {tuple(s.a.shape[2:])} has {s.a.ndim - 2} spatial axes "
                                  f"but the input has {x.ndim - 2}: choose a layer with the input's axes")
            cam = self._layer_map(s)
            cam = cam.clamp(min=0) if self.relu else cam
            maps.append(upsample_maps(cam, x.shape[2:]) if self.upsample else cam)
        if len(maps) == 1:
            return maps[0], targets
        return torch.stack([minmax_maps(m) for m in maps]).mean(0), targets

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        maps, targets = self._maps(x, spec)
        if self.aug_smooth:
            fixed = TargetSpec(fixed=targets)
            for flip, mult in AUGMENTATIONS[1:]:
                m, _ = self._maps((x.flip(-1) if flip else x) * mult, fixed)
                maps = maps + (m.flip(-1) if flip else m)
            maps = maps / len(AUGMENTATIONS)
        return maps.to(x.dtype)


def _layer_gradients(scores: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """d scores[:, t] / d leaf for every target column t: per leaf (B, T, *leaf.shape[1:])."""
    n_t = scores.shape[1]
    per: list[list[torch.Tensor]] = [[] for _ in leaves]
    try:
        for t in range(n_t):
            gs = torch.autograd.grad(scores[:, t].sum(), leaves, retain_graph=t < n_t - 1)
            for acc, g in zip(per, gs, strict=True):
                acc.append(g)
    except RuntimeError as err:
        raise ConfigError(f"the output does not depend on the CAM layer ({err})") from None
    return [torch.stack(acc, dim=1) for acc in per]


@REGISTRY.register("gradcam")
class GradCAM(_CAMBase):
    """Grad-CAM: ``w_k = mean_ij d f_c / d A^k_ij``, ``M = relu(sum_k w_k A^k)``.

    ``GradCAM(model, layer=None | "dotted.name" | module | [...], relu=True, upsample=True)``;
    ``attribute(x, target)`` -> (B, [T,] 1, H, W) (bilinear, align_corners=False) or at the
    layer's resolution (B, [T,] 1, h, w) with ``upsample=False``. Raw maps equal captum's
    ``LayerGradCam(relu_attributions=True)``; per-sample targets are honoured.
    """

    def weights(self, s: LayerState) -> torch.Tensor:
        return s.g.flatten(3).mean(-1)


@REGISTRY.register("gradcam++", "gradcampp")
class GradCAMPlusPlus(_CAMBase):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): with g = d f_c / d A,
    ``alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3 + 1e-6)`` (0 where g = 0),
    ``w_k = sum_ij alpha^k_ij relu(g_ij)``, ``M = relu(sum_k w_k A^k)``. Shapes as GradCAM.
    """

    eps = 1e-6

    def weights(self, s: LayerState) -> torch.Tensor:
        a, g = s.a, s.g
        g2 = g * g
        total = a.flatten(2).sum(-1).view(a.shape[0], 1, a.shape[1], *([1] * (a.ndim - 2)))
        alpha = g2 / (2 * g2 + total * g2 * g + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * g.clamp(min=0)).flatten(3).sum(-1)
