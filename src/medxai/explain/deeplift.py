"""DeepLIFT (Shrikumar, Greenside & Kundaje 2017, "Learning important features through propagating
activation differences", ICML), rescale rule, as a modified gradient.

Linear ops (Linear, Conv, BatchNorm in eval mode, average pooling, residual additions,
concatenation) keep their gradient: their multipliers are their weights (eq. 2-3 and the chain rule
for multipliers, eq. 3). Elementwise nonlinearities ``y = f(z)`` (ReLU, LeakyReLU, ELU, sigmoid,
tanh, softplus, SiLU, GELU) get the rescale multiplier ``m = Δy / Δz`` (sec. 3.5.1, eq. 6-7),
with the gradient ``f'(z)`` where ``|Δz| < eps`` (as the paper's numerical fallback and captum).
``nn.MaxPool2d`` gets captum 0.9.0's maxpool rule (multipliers that split ``Δy`` of each window
between the argmax of the input and that of the baseline, so that ``Σ m Δx = Δy``).
Attribution = ``(x - x') * multiplier`` (eq. 1: summation-to-delta), so ``Σ attr = f_c(x) - f_c(x')``
(completeness) when every nonlinearity of the model is one of these modules (functional
``F.relu`` calls inside ``forward`` are not seen and keep their gradient).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from medxai._util.validate import check_images
from medxai.errors import ConfigError, InputError
from medxai.explain.base import Attribution, TargetSpec
from medxai.explain.engine import for_chunks
from medxai.explain.lrp import chunk_spec, out_of_place
from medxai.explain.registry import REGISTRY

__all__ = ["DeepLift", "deeplift_hooks"]

#: elementwise nonlinearities that get the rescale rule
RESCALE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.SiLU, nn.GELU, nn.ReLU6,
           nn.CELU, nn.SELU, nn.Mish, nn.Hardswish, nn.Hardtanh)


def _same_value(value: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward, the gradient of ``term`` in the backward."""
    return value.detach() + (term - term.detach())


def _rescale(z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, y0: torch.Tensor, eps: float) -> torch.Tensor:
    """Output with value ``y`` whose gradient is ``Δy/Δz`` (gradient of ``f`` where ``|Δz| < eps``)."""
    dz = (z - z0).detach()
    small = dz.abs() < eps
    m = torch.where(small, 0.0, (y - y0).detach() / torch.where(small, 1.0, dz)).to(z.dtype)
    return torch.where(small, y, _same_value(y, z * m))


def _maxpool(mod: nn.MaxPool2d, z: torch.Tensor, y: torch.Tensor, z0: torch.Tensor, y0: torch.Tensor,
             eps: float) -> torch.Tensor:
    """captum 0.9.0's DeepLIFT maxpool multipliers: window output change ``Δy`` split as
    ``max(y, y') - y'`` to the input's argmax and ``y - max(y, y')`` to the baseline's argmax, each
    divided by that position's ``Δx`` (plain gradient where ``|Δx| < eps``)."""
    kw = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
              ceil_mode=mod.ceil_mode, return_indices=True)
    with torch.no_grad():
        idx = F.max_pool2d(z.detach(), **kw)[1].flatten(2)
        idx0 = F.max_pool2d(z0, **kw)[1].flatten(2)
        top = torch.maximum(y.detach(), y0)
        part, part0 = (top - y0).flatten(2), (y.detach() - top).flatten(2)
        dz = (z - z0).detach()
        small = dz.abs() < eps
        inv = torch.where(small, 0.0, 1.0 / torch.where(small, 1.0, dz)).to(z.dtype)

    def pick(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return t.flatten(2).gather(2, i)

    term = pick(z * inv, idx) * part + pick(z * inv, idx0) * part0 + pick(z * small.to(z.dtype), idx)
    return _same_value(y, term.view_as(y))


@contextmanager
def deeplift_hooks(model: nn.Module, eps: float = 1e-10) -> Iterator[list]:
    """Two phases: the first forward inside the block (at the baseline) records each nonlinearity's
    input and output per call; the next forward (at the input) replaces each output by one of the
    same value with the DeepLIFT multiplier as gradient. Hooks are removed on exit, also on error."""
    refs: list[tuple[torch.Tensor, torch.Tensor]] = []
    state = {"phase": "reference", "i": 0}

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        z = inp[0]
        if state["phase"] == "reference":
            refs.append((z.detach(), out.detach()))
            return None
        if state["i"] >= len(refs):
            raise ConfigError("DeepLIFT: the model called its nonlinearities differently at the baseline")
        z0, y0 = refs[state["i"]]
        state["i"] += 1
        if z0.shape != z.shape:
            raise ConfigError("DeepLIFT: the baseline and the input reach a nonlinearity with different shapes")
        if isinstance(m, nn.MaxPool2d):
            return _maxpool(m, z, out, z0, y0, eps)
        return _rescale(z, out, z0, y0, eps)

    handles = []
    try:
        with out_of_place(model):
            handles = [m.register_forward_hook(hook) for m in model.modules()
                       if isinstance(m, (*RESCALE, nn.MaxPool2d))]
            yield [state, refs]
    finally:
        for h in handles:
            h.remove()


@REGISTRY.register("deeplift")
class DeepLift(Attribution):
    """DeepLIFT with the rescale rule (module docstring): (B, C, H, W) or (B, T, C, H, W).

    ``baseline``: the reference image in pixel units, [0, 1] (default black, 0), broadcastable to the
    batch ((C, H, W), (1, C, H, W) or (B, C, H, W)); given to the constructor or to ``attribute``.
    ``eps`` (1e-10, captum's) is the |Δz| below which a nonlinearity uses its gradient.
    Only ``output="logit"``: a softmax / sigmoid on top would be a nonlinearity without the rule.
    """

    needs_hooks = True
    default_reduce = "sum"

    def __init__(self, model: nn.Module, *, baseline: torch.Tensor | float | None = None, eps: float = 1e-10,
                 output: str = "logit") -> None:
        super().__init__(model, output=output)
        if output != "logit":
            raise ConfigError(f"DeepLIFT explains the logit; output={output!r} is not supported")
        if eps < 0:
            raise ConfigError(f"DeepLIFT eps must be >= 0, got {eps}")
        self.baseline, self.eps = baseline, eps

    def _baseline(self, x: torch.Tensor, baseline: torch.Tensor | float | None) -> torch.Tensor:
        base = self.baseline if baseline is None else baseline
        if base is None:
            return torch.zeros_like(x)
        base = torch.as_tensor(base, dtype=x.dtype, device=x.device)
        if base.ndim == 3:
            base = base[None]
        try:
            base = torch.broadcast_to(base, x.shape).contiguous()
        except RuntimeError:
            raise InputError(f"baseline of shape {tuple(base.shape)} does not broadcast to {tuple(x.shape)}") from None
        return check_images(base, "baseline")

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw):
        return self._compute(x, spec, **kw)

    def _compute(self, x: torch.Tensor, spec: TargetSpec, baseline: torch.Tensor | float | None = None,
                 return_convergence_delta: bool = False):
        """(B, T, C, H, W) maps; with ``return_convergence_delta`` also the summation-to-delta error
        ``sum attr - (f_c(x) - f_c(x'))``, (B, T)."""
        base = self._baseline(x, baseline)
        b = x.shape[0]
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []

        def run(s0: int, s1: int) -> None:
            parts.append(self._chunk(x[s0:s1], base[s0:s1], chunk_spec(spec, s0, s1, b)))

        for_chunks(b, b, run, what="images")
        attr, delta = (torch.cat(p) for p in zip(*parts, strict=True))
        return (attr, delta) if return_convergence_delta else attr

    def _chunk(self, x: torch.Tensor, base: torch.Tensor, spec: TargetSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference forward at the baseline, hooked forward at ``x``, T backward passes:
        (attributions (B, T, C, H, W), convergence delta (B, T))."""
        with deeplift_hooks(self.model, self.eps) as (state, _refs):
            with torch.no_grad():
                ref_logits = self.model(base)
            state["phase"] = "input"
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(xg)
                targets = spec.resolve(logits, x.shape[0])
                scores = logits.gather(1, targets)
                grads = []
                for t in range(targets.shape[1]):
                    (g,) = torch.autograd.grad(scores[:, t].sum(), xg, retain_graph=t < targets.shape[1] - 1)
                    grads.append(g)
        attr = ((x - base)[:, None] * torch.stack(grads, dim=1)).to(x.dtype)
        gap = scores.detach() - ref_logits.gather(1, targets)
        return attr, attr.flatten(2).sum(-1) - gap
