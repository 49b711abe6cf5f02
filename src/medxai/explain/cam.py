"""Class activation maps: Grad-CAM (Selvaraju 2017) and Grad-CAM++ (Chattopadhyay 2018, eq. 19).

The target layer's activation A is captured by a forward hook that detaches it into a leaf and
hands the model a copy, so ``torch.autograd.grad`` computes d f_c / d A only (no backward into
the layers before it, no parameter gradients). T targets per sample: one forward, T gradients.
ViT token layers (B, P + N, D) are reshaped to the patch grid after dropping the P prefix tokens
(CLS, registers). Definitions: ``definitions.md`` section 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.explain.base import TargetSpec, select_output
from medxai.explain.gradient import (
    GradientAttribution,
    target_gradients,
)
from medxai.explain.registry import REGISTRY

__all__ = ["GradCAM", "GradCAMPlusPlus", "find_cam_layer"]


def find_cam_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The automatic CAM layer: ``model.default_cam_layer`` (a dotted name) if set, else the
    last module (in execution order) whose output is a 4-D (B, C, h, w) tensor with h * w > 1,
    found by one traced no-grad forward of ``x[:1]`` (falls back to the last 4-D output)."""
    name = getattr(model, "default_cam_layer", None)
    if name:
        return name, _get(model, name)
    seen: list[tuple[str, int]] = []
    handles = []

    def make(n: str):
        def hook(_m: nn.Module, _i: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((n, out.shape[-1] * out.shape[-2]))
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
        raise ConfigError("no module with a 4-D (B, C, h, w) output: give the CAM layer by name")
    return chosen, model.get_submodule(chosen)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-8:]
        raise ConfigError(f"the model has no layer {name!r} (last layers: {names})") from None


@contextmanager
def capture_activation(layer: nn.Module) -> Iterator[dict]:
    """Record ``layer``'s output as a gradient leaf ``store["A"]``; the model continues with a copy.

    For a module called several times, the last call is kept. Hook removed on exit (also on error).
    """

    store: dict = {}

    def hook(_m: nn.Module, _i: tuple, out: object) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"the CAM layer must output a tensor, got {type(out).__name__}")
        leaf = out.detach().requires_grad_(True)
        store["A"] = leaf
        return leaf.clone()  # non-leaf copy: later in-place ops of the model are allowed

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


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


class _CAMBase(GradientAttribution):
    """Owns the layer, the hook, targets and upsampling; subclasses weight the channels."""

    needs_hooks = True
    default_reduce = None  # one channel already

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *, output: str = "logit",
                 relu: bool = True, upsample: bool = True) -> None:
        super().__init__(model, output=output)
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise ConfigError(f"layer must be a dotted name, a module or None, got {type(layer).__name__}")
        self.layer, self.relu, self.upsample = layer, relu, upsample
        self._module: nn.Module | None = layer if isinstance(layer, nn.Module) else None

    def layer_module(self, x: torch.Tensor) -> nn.Module:
        """The target layer (resolved once: by name, given module, or ``find_cam_layer``)."""
        if self._module is None:
            if isinstance(self.layer, str):
                self._module = _get(self.model, self.layer)
            else:
                self.layer, self._module = find_cam_layer(self.model, x)
        return self._module

    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        """Activation-shaped (B, ...) -> (B, K, *spatial)."""
        if t.ndim == 3:
            return tokens_to_grid(t, getattr(self.model, "num_prefix_tokens", None))
        if t.ndim < 4:
            raise ConfigError(f"the CAM layer's output has shape {tuple(t.shape)}; need (B, C, h, w) or tokens")
        return t

    def weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Channel weights (B, T, K) from activation (B, K, *S) and gradients (B, T, K, *S)."""
        raise NotImplementedError

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        layer = self.layer_module(x)
        with capture_activation(layer) as store, torch.enable_grad():
            logits = self.model(x)
        if "A" not in store:
            raise ConfigError("the CAM layer was not called in the forward pass")
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, self.output).gather(1, targets)
        leaf = store["A"]
        try:
            grads = target_gradients(scores, leaf)  # (B, T, *A.shape[1:])
        except RuntimeError as err:
            raise ConfigError(f"the output does not depend on the CAM layer ({err})") from None
        a = self._grid(leaf.detach())
        g = self._grid(grads.flatten(0, 1)).unflatten(0, grads.shape[:2])
        w = self.weights(a, g)  # (B, T, K)
        spatial = a.shape[2:]
        cam = (w.view(*w.shape, *([1] * len(spatial))) * a[:, None]).sum(2, keepdim=True)  # (B, T, 1, *S)
        if self.relu:
            cam = cam.clamp(min=0)
        if self.upsample and tuple(spatial) != tuple(x.shape[2:]):
            cam = F.interpolate(cam.flatten(0, 1), size=x.shape[2:], mode="bilinear",
                                align_corners=False).unflatten(0, cam.shape[:2])
        return cam.to(x.dtype)


@REGISTRY.register("gradcam")
class GradCAM(_CAMBase):
    """Grad-CAM: ``w_k = mean_ij d f_c / d A^k_ij``, ``M = relu(sum_k w_k A^k)``.

    ``GradCAM(model, layer=None | "dotted.name" | module, relu=True, upsample=True)``;
    ``attribute(x, target)`` -> (B, [T,] 1, H, W) (bilinear, align_corners=False) or at the
    layer's resolution (B, [T,] 1, h, w) with ``upsample=False``. Raw maps equal captum's
    ``LayerGradCam(relu_attributions=True)``; per-sample targets are honoured.
    """

    def weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g.flatten(3).mean(-1)


@REGISTRY.register("gradcam++", "gradcampp")
class GradCAMPlusPlus(_CAMBase):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): with g = d f_c / d A,
    ``alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3 + 1e-6)`` (0 where g = 0),
    ``w_k = sum_ij alpha^k_ij relu(g_ij)``, ``M = relu(sum_k w_k A^k)``. Shapes as GradCAM.
    """

    eps = 1e-6

    def weights(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g2 = g * g
        s = a.flatten(2).sum(-1)[:, None].view(a.shape[0], 1, a.shape[1], *([1] * (a.ndim - 2)))
        alpha = g2 / (2 * g2 + s * g2 * g + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * g.clamp(min=0)).flatten(3).sum(-1)
