"""Reduced-precision explanations: the model's weights cast to bf16 ONCE per explanation.

``torch.autocast`` re-casts every weight at every op call (its cache is off for parameters that do
not require grad, which an explanation freezes); here the floating parameters and buffers are cast
in place once when an explanation starts, and the caller's fp32 tensors are put back, bitwise (the
very same tensor objects), when it ends, also on error. In place rather than a ``deepcopy`` so that
module identities stay: a CAM layer given as a module, the caller's hooks and ``default_cam_layer``
all keep working. The model is therefore bf16 while the explanation runs (do not share it with
another thread meanwhile). A forward pre-hook casts the floating inputs to bf16 (differentiably,
so input gradients reach the fp32 input) and a forward hook casts the logits to float32; both are
removed on exit. The methods keep their sums in fp32 (IG's quadrature and ``(x - x') *``, the
CAMs' channel weights and weighted sum).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from medxai.errors import ConfigError

__all__ = ["PRECISIONS", "check_precision", "low_precision", "precision_context"]

#: accepted ``precision=`` values and their compute dtype
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ConfigError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return precision


def _cast(t: object, dtype: torch.dtype) -> object:
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.to(dtype)
    if isinstance(t, (tuple, list)):
        return type(t)(_cast(v, dtype) for v in t)
    if isinstance(t, dict):
        return {k: _cast(v, dtype) for k, v in t.items()}
    return t


@contextmanager
def low_precision(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> Iterator[nn.Module]:
    """Cast ``model``'s floating parameters and buffers to ``dtype`` in place, once; inputs cast to
    ``dtype`` at entry, floating outputs to float32. On exit (also on error) every parameter's and
    buffer's original tensor is restored (bitwise: the same objects), the hooks are removed;
    ``requires_grad``, ``.grad``, modes and the caller's hooks are never touched."""
    params = [(p, p.data) for p in model.parameters() if p.is_floating_point()]
    bufs = [(m, k, b) for m in model.modules() for k, b in m._buffers.items()
            if b is not None and b.is_floating_point()]
    handles = []
    try:
        with torch.no_grad():
            for p, data in params:
                p.data = data.to(dtype)
            for m, k, b in bufs:
                m._buffers[k] = b.to(dtype)
        handles.append(model.register_forward_pre_hook(lambda _m, args: _cast(args, dtype)))
        handles.append(model.register_forward_hook(lambda _m, _a, out: _cast(out, torch.float32)))
        yield model
    finally:
        for h in handles:
            h.remove()
        for p, data in params:
            p.data = data
        for m, k, b in bufs:
            m._buffers[k] = b


def precision_context(model: nn.Module, precision: str):
    """``low_precision(model, bf16)`` for ``"bf16"``, a no-op context for ``"fp32"``."""
    dtype = PRECISIONS[check_precision(precision)]
    return nullcontext(model) if dtype == torch.float32 else low_precision(model, dtype)

