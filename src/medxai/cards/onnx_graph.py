"""An exact ONNX interpreter in torch: an ONNX classifier as a differentiable ``nn.Module``.

Gradient explanations (saliency, integrated gradients, Grad-CAM through forward hooks) and
adversarial attacks need a torch module. The usual converter, ``onnx2torch``, imports
torchvision, which fails to import with the project's CPU torch build; so this module walks the
ONNX graph itself, one submodule per node, with torch ops only (no numpy in ``forward``): it runs
on any device the module is moved to and for any batch size (shape subgraphs such as
Shape -> Gather -> Unsqueeze -> Concat -> Reshape are computed on the fly).

``onnx_to_torch(path)`` returns an ``OnnxModule`` (input (B, ...) -> the graph's one output).
Each node is an ``OnnxNode`` registered under a sanitised node name (``/features/features.0/Conv``
-> ``features_features_0_Conv``; ``{op_type}_{index}`` when unnamed; deduplicated), so forward
hooks on a Conv node see its output. Float initializers used as weights (Conv / ConvTranspose
W and B, Gemm and MatMul constant operands, BatchNormalization scale and B, LayerNormalization
scale and bias, PRelu slope, Add / Sub / Mul / Div constant operands of rank >= 1, Expand /
Concat / Einsum float constants such as a CLS token) are ``nn.Parameter``\\ s of their node;
other initializers (BatchNorm running statistics, shapes, indices, 0-d scalars) and Constant
values are buffers. An initializer used by several nodes lives once on ``module.shared``.
``crosscheck(path, module, x)`` compares the module with onnxruntime.

Supported operators (default domain, opset >= 7; semantics of https://onnx.ai/onnx/operators/):
Abs, Add, And, AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat, Constant,
ConstantOfShape, Conv (1-3-D), ConvTranspose (1-3-D), Cos, Div, Dropout, Einsum, Elu, Equal, Erf,
Exp, Expand, Flatten, Floor, Gather, Gelu, Gemm, GlobalAveragePool, GlobalMaxPool, Greater,
GreaterOrEqual, HardSigmoid, HardSwish, Identity, LayerNormalization, LeakyRelu, Less,
LessOrEqual, Log, LogSoftmax, MatMul, Max, MaxPool, Min, Mul, Neg, Not, Or, Pad, Pow, PRelu,
Range, Reciprocal, ReduceMax, ReduceMean, ReduceMin, ReduceSum, Relu, Reshape, Resize, Selu,
Shape, Sigmoid, Sin, Slice, Softmax, Softplus, Split, Sqrt, Squeeze, Sub, Sum, Tanh, Transpose,
Unsqueeze, Where.

Refused with a one-line ``ModelError``: other operators (all listed at once), non-default
domains, more than one graph input or output, opset < 7, and attribute values not implemented
exactly: Resize cubic / tf_crop_and_resize / antialias / keep_aspect_ratio_policy other than
stretch (and Resize before opset 11), AveragePool dilations, MaxPool's Indices output,
BatchNormalization in training mode, Cast to string or exotic types, string constants.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ModelError

if TYPE_CHECKING:
    import onnx

__all__ = ["OnnxModule", "OnnxNode", "crosscheck", "onnx_to_torch"]

Tensor = torch.Tensor
_INSTALL = "pip install onnx onnxruntime"
_MIN_OPSET = 7


# ----------------------------------------------------------------------------------------------- modules


class OnnxNode(nn.Module):
    """One ONNX node: its op function, attributes, and the initializers it owns.

    ``slots`` says where each ONNX input comes from: ``("arg", "")`` the next forward argument,
    ``("own", attr)`` a parameter / buffer of this module, ``("none", "")`` an omitted optional input.
    """

    def __init__(self, op_type: str, fn: Callable[..., Any], attrs: dict[str, Any], opset: int,
                 slots: list[tuple[str, str]], n_outputs: int) -> None:
        super().__init__()
        self.op_type = op_type
        self.fn = fn
        self.attrs = attrs
        self.opset = opset
        self.slots = slots
        self.n_outputs = n_outputs

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The node's output tensor (a tuple for multi-output nodes such as Split)."""
        it = iter(args)
        inputs = [next(it) if kind == "arg" else getattr(self, key) if kind == "own" else None
                  for kind, key in self.slots]
        return self.fn(self, *inputs)

    def extra_repr(self) -> str:
        return f"op_type={self.op_type!r}"


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: ``forward(x)`` runs the nodes in graph order.

    x: the graph's one input, e.g. (B, C, H, W) for any B; returns the graph's one output.
    ``op_types`` maps submodule name -> ONNX op type, ``onnx_names`` -> the ONNX node name.
    """

    def __init__(self, input_name: str, output_name: str) -> None:
        super().__init__()
        self.input_name = input_name
        self.output_name = output_name
        self.shared = nn.Module()
        self.op_types: dict[str, str] = {}
        self.onnx_names: dict[str, str] = {}
        self._order: list[str] = []
        self._io: dict[str, tuple[list[str], list[str]]] = {}
        self._shared_values: dict[str, str] = {}

    def layer_names(self) -> list[str]:
        """Submodule names of the nodes in execution order (e.g. to pick the last Conv for Grad-CAM)."""
        return list(self._order)

    def add_node(self, onnx_name: str, index: int, node: OnnxNode, inputs: list[str], outputs: list[str]) -> str:
        """Register ``node`` under a unique sanitised name; ``inputs`` are the value names it is called with."""
        base = _sanitise(onnx_name) or f"{node.op_type}_{index}"
        name, k = base, 0
        while hasattr(self, name):
            k += 1
            name = f"{base}_{k}"
        self.add_module(name, node)
        self._order.append(name)
        self._io[name] = (inputs, outputs)
        self.op_types[name] = node.op_type
        self.onnx_names[name] = onnx_name
        return name

    def add_shared(self, value_name: str, value: Tensor, parameter: bool) -> None:
        """Keep an initializer used by several nodes once, on ``self.shared``."""
        base = _sanitise(value_name) or "value"
        name, k = base, 0
        while hasattr(self.shared, name):
            k += 1
            name = f"{base}_{k}"
        if parameter:
            self.shared.register_parameter(name, nn.Parameter(value))
        else:
            self.shared.register_buffer(name, value)
        self._shared_values[value_name] = name

    def forward(self, x: Tensor) -> Tensor:
        """x: the graph input (B, ...) -> the graph output (B, ...)."""
        env: dict[str, Tensor] = {self.input_name: x}
        for value_name, attr in self._shared_values.items():
            env[value_name] = getattr(self.shared, attr)
        for name in self._order:
            inputs, outputs = self._io[name]
            out = self._modules[name](*[env[v] for v in inputs])
            if not isinstance(out, tuple):
                out = (out,)
            for value_name, value in zip(outputs, out, strict=False):
                if value_name:
                    env[value_name] = value
        return env[self.output_name]


def _sanitise(name: str | bytes) -> str:
    if isinstance(name, bytes):  # protobuf hands over names that are not valid UTF-8 as bytes
        name = name.decode("utf-8", "replace")
    return re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z_]", "_", name)).strip("_")


# ----------------------------------------------------------------------------------------------- helpers


def _ints(t: Tensor | None, n: OnnxNode, attr: str) -> list[int] | None:
    """An int list given as an input tensor (newer opsets) or as attribute ``attr`` (older ones)."""
    if t is not None:
        return [int(v) for v in t.reshape(-1).tolist()]
    value = n.attrs.get(attr)
    return None if value is None else [int(v) for v in value]


def _torch_pad(pairs: list[tuple[int, int]]) -> list[int]:
    """Per-dimension (begin, end) pairs of the trailing dims -> F.pad's last-dim-first flat list."""
    flat: list[int] = []
    for begin, end in reversed(pairs):
        flat += [begin, end]
    return flat


def _auto_pads(n: OnnxNode, spatial: list[int], eff: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """Explicit (begin, end) pads per spatial dim from ``auto_pad`` / ``pads`` (eff: dilated kernel)."""
    auto, nd = n.attrs.get("auto_pad", "NOTSET"), len(spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        res = []
        for size, k, s in zip(spatial, eff, strides, strict=False):
            total = max(0, (-(-size // s) - 1) * s + k - size)
            res.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
        return res
    if auto == "VALID":
        return [(0, 0)] * nd
    p = n.attrs.get("pads", [0] * 2 * nd)
    return [(int(p[i]), int(p[i + nd])) for i in range(nd)]


def _window(n: OnnxNode, x: Tensor, kernel: list[int]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    nd = x.dim() - 2
    strides = list(n.attrs.get("strides", [1] * nd))
    dil = list(n.attrs.get("dilations", [1] * nd))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=False)]
    return strides, dil, _auto_pads(n, list(x.shape[2:]), eff, strides)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# ----------------------------------------------------------------------------------------------- convolution, pooling


def _conv(n: OnnxNode, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """Conv: x (N, C, *S), w (M, C / group, *k), b (M,) -> (N, M, *S')."""
    strides, dil, pads = _window(n, x, list(n.attrs.get("kernel_shape", w.shape[2:])))
    conv, group = _CONV[x.dim() - 2], int(n.attrs.get("group", 1))
    if all(p0 == p1 for p0, p1 in pads):
        return conv(x, w, b, strides, [p0 for p0, _ in pads], dil, group)
    return conv(F.pad(x, _torch_pad(pads)), w, b, strides, 0, dil, group)


def _conv_transpose(n: OnnxNode, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """ConvTranspose: x (N, C, *S), w (C, M / group, *k), b (M,) -> (N, M, *S')."""
    nd = x.dim() - 2
    kernel = list(n.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(n.attrs.get("strides", [1] * nd))
    dil = list(n.attrs.get("dilations", [1] * nd))
    out_pad = list(n.attrs.get("output_padding", [0] * nd))
    full = [s * (i - 1) + (k - 1) * d + 1 for i, s, k, d in zip(x.shape[2:], strides, kernel, dil, strict=False)]
    auto, shape = n.attrs.get("auto_pad", "NOTSET"), n.attrs.get("output_shape")
    if shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(shape)[-nd:] if shape else [i * s for i, s in zip(x.shape[2:], strides, strict=False)]
        total = [f + o - t for f, o, t in zip(full, out_pad, target, strict=False)]
        upper = auto == "SAME_UPPER"
        pads = [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in total]
    else:
        pads = _auto_pads(n, list(x.shape[2:]), [1] * nd, strides) if auto == "NOTSET" else [(0, 0)] * nd
    y = _CONV_T[nd](x, w, None, strides, 0, 0, int(n.attrs.get("group", 1)), dil)
    y = F.pad(y, _torch_pad([(-p0, o - p1) for (p0, p1), o in zip(pads, out_pad, strict=False)]))
    return y if b is None else y + b.reshape(1, -1, *[1] * nd)


def _pool_geometry(n: OnnxNode, x: Tensor) -> tuple[list[int], list[int], list[int], list[tuple[int, int]], list[int]]:
    """kernel, strides, dilations, declared (begin, end) pads, and the extra end padding ceil_mode needs."""
    kernel = [int(k) for k in n.attrs["kernel_shape"]]
    strides, dil, pads = _window(n, x, kernel)
    ceil, extra = bool(n.attrs.get("ceil_mode", 0)), []
    for size, (p0, p1), k, d, s in zip(x.shape[2:], pads, kernel, dil, strides, strict=False):
        span = size + p0 + p1 - ((k - 1) * d + 1)
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + p0:  # windows starting in the right padding are dropped
            out -= 1
        extra.append(max(0, (out - 1) * s + (k - 1) * d + 1 - (size + p0 + p1)))
    return kernel, strides, dil, pads, extra


def _max_pool(n: OnnxNode, x: Tensor) -> Tensor:
    """MaxPool: x (N, C, *S) -> (N, C, *S'); padding never wins the max."""
    kernel, strides, dil, pads, extra = _pool_geometry(n, x)
    full = [(p0, p1 + e) for (p0, p1), e in zip(pads, extra, strict=False)]
    if any(p0 or p1 for p0, p1 in full):
        low = torch.finfo(x.dtype).min if x.is_floating_point() else torch.iinfo(x.dtype).min
        x = F.pad(x, _torch_pad(full), value=-math.inf if x.is_floating_point() else low)
    return _MAX_POOL[x.dim() - 2](x, kernel, strides, 0, dil)


def _avg_pool(n: OnnxNode, x: Tensor) -> Tensor:
    """AveragePool: x (N, C, *S) -> (N, C, *S'); count_include_pad counts the declared pads only."""
    kernel, strides, _, pads, extra = _pool_geometry(n, x)
    include, pool = bool(n.attrs.get("count_include_pad", 0)), _AVG_POOL[x.dim() - 2]
    if not any(extra) and all(p0 == p1 and 2 * p0 <= k for (p0, p1), k in zip(pads, kernel, strict=False)):
        return pool(x, kernel, strides, [p0 for p0, _ in pads], False, include)
    full = [(p0, p1 + e) for (p0, p1), e in zip(pads, extra, strict=False)]
    mask = F.pad(x.new_ones((1, 1, *x.shape[2:])), _torch_pad(pads), value=1.0 if include else 0.0)
    mask = F.pad(mask, _torch_pad([(0, e) for e in extra]))
    return pool(F.pad(x, _torch_pad(full)), kernel, strides) / pool(mask, kernel, strides)


def _global(reduce: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def op(n: OnnxNode, x: Tensor) -> Tensor:
        """Global pooling: (N, C, *S) -> (N, C, 1, ...)."""
        return reduce(x, dim=tuple(range(2, x.dim())), keepdim=True)
    return op


# ----------------------------------------------------------------------------------------------- normalisation, linear


def _batch_norm(n: OnnxNode, x: Tensor, scale: Tensor, b: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """BatchNormalization (inference): x (N, C, ...) with per-channel statistics."""
    return F.batch_norm(x, mean, var, scale, b, False, 0.0, float(n.attrs.get("epsilon", 1e-5)))


def _layer_norm(n: OnnxNode, x: Tensor, scale: Tensor, b: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
    """LayerNormalization over the dims from ``axis`` on; optional Mean / InvStdDev outputs."""
    axis, eps = int(n.attrs.get("axis", -1)) % x.dim(), float(n.attrs.get("epsilon", 1e-5))
    shape = tuple(x.shape[axis:])
    if n.n_outputs == 1 and tuple(scale.shape) == shape and (b is None or tuple(b.shape) == shape):
        return F.layer_norm(x, shape, scale, b, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv * scale
    y = y if b is None else y + b
    return (y, mean, inv) if n.n_outputs > 1 else y


def _gemm(n: OnnxNode, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    """Gemm: alpha * A' (M, K) @ B' (K, N) + beta * C (broadcast to (M, N))."""
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    a = a.t() if n.attrs.get("transA", 0) else a
    weight = b if n.attrs.get("transB", 0) else b.t()  # F.linear wants (N, K)
    fused = c is not None and c.dim() <= 1 and alpha == 1.0 and beta == 1.0
    y = F.linear(a, weight, c if fused else None)
    y = y if alpha == 1.0 else alpha * y
    if c is not None and not fused:
        y = y + (c if beta == 1.0 else beta * c)
    return y


def _div(n: OnnxNode, a: Tensor, b: Tensor) -> Tensor:
    """Div (integer division truncates, as in onnxruntime)."""
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _prelu(n: OnnxNode, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x < 0, x * slope, x)


def _softmax(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def op(n: OnnxNode, x: Tensor) -> Tensor:
        """(Log)Softmax along ``axis`` (opset >= 13); before 13 over the flattened dims from ``axis`` on."""
        if n.opset >= 13:
            return fn(x, dim=int(n.attrs.get("axis", -1)))
        axis = int(n.attrs.get("axis", 1)) % x.dim()
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return fn(flat, dim=1).reshape(x.shape)
    return op


def _clip(n: OnnxNode, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    """Clip: min / max as inputs (opset >= 11) or attributes (older)."""
    if n.opset < 11:
        lo, hi = n.attrs.get("min"), n.attrs.get("max")
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


def _selu(n: OnnxNode, x: Tensor) -> Tensor:
    alpha, gamma = n.attrs.get("alpha"), n.attrs.get("gamma")
    if alpha is None and gamma is None:
        return F.selu(x)
    alpha = 1.67326319217681884765625 if alpha is None else float(alpha)
    gamma = 1.05070102214813232421875 if gamma is None else float(gamma)
    return torch.where(x > 0, gamma * x, gamma * (alpha * torch.exp(x) - alpha))


# ----------------------------------------------------------------------------------------------- shapes


def _reshape(n: OnnxNode, x: Tensor, shape: Tensor) -> Tensor:
    """Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = [int(d) for d in shape.tolist()]
    if not n.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _flatten(n: OnnxNode, x: Tensor) -> Tensor:
    """Flatten: (d0, ..., dn) -> (d0 * ... * d_{axis-1}, d_axis * ... * dn)."""
    axis = int(n.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _transpose(n: OnnxNode, x: Tensor) -> Tensor:
    return x.permute(*n.attrs.get("perm", range(x.dim() - 1, -1, -1)))


def _concat(n: OnnxNode, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=int(n.attrs["axis"]))


def _split(n: OnnxNode, x: Tensor, split: Tensor | None = None) -> tuple[Tensor, ...]:
    """Split along ``axis`` by ``split`` sizes, else into equal parts (the last smaller, opset 18)."""
    axis = int(n.attrs.get("axis", 0)) % x.dim()
    sizes = _ints(split, n, "split")
    if not sizes:
        parts, size = int(n.attrs.get("num_outputs", n.n_outputs)), x.shape[axis]
        chunk = -(-size // parts)
        sizes = [chunk] * (parts - 1) + [size - chunk * (parts - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


def _slice(n: OnnxNode, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    """Slice with the spec's clamping; negative steps via index_select."""
    st, en = _ints(starts, n, "starts") or [], _ints(ends, n, "ends") or []
    ax = _ints(axes, n, "axes") or list(range(len(st)))
    sp = _ints(steps, n, "steps") or [1] * len(st)
    for s, e, a, step in zip(st, en, ax, sp, strict=False):
        a %= x.dim()
        dim = x.shape[a]
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if step > 0:
            index = [slice(None)] * a + [slice(min(max(s, 0), dim), min(max(e, 0), dim), step)]
            x = x[tuple(index)]
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            x = x.index_select(a, torch.arange(s, e, step, device=x.device))
    return x


def _squeeze(n: OnnxNode, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _ints(axes, n, "axes")
    if dims is None:
        return x.squeeze()
    return x.squeeze(tuple(sorted({d % x.dim() for d in dims}))) if dims else x


def _unsqueeze(n: OnnxNode, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = _ints(axes, n, "axes") or []
    rank = x.dim() + len(dims)
    for d in sorted(d % rank for d in dims):
        x = x.unsqueeze(d)
    return x


def _shape(n: OnnxNode, x: Tensor) -> Tensor:
    """Shape (int64, on x's device), optionally dims[start:end] (opset 15)."""
    dims = list(x.shape)[int(n.attrs.get("start", 0)):n.attrs.get("end")]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def _gather(n: OnnxNode, data: Tensor, idx: Tensor) -> Tensor:
    """Gather: out shape data.shape[:axis] + idx.shape + data.shape[axis + 1:]; negative indices wrap."""
    axis = int(n.attrs.get("axis", 0)) % data.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


def _expand(n: OnnxNode, x: Tensor, shape: Tensor) -> Tensor:
    """Expand: bidirectional (numpy) broadcast of x with ``shape``."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in shape.tolist())))


def _constant(n: OnnxNode) -> Tensor:
    return n.value


def _constant_of_shape(n: OnnxNode, shape: Tensor) -> Tensor:
    value = n.attrs.get("value")
    value = torch.zeros(1) if value is None else value
    dims = [int(d) for d in shape.tolist()]
    return torch.full(dims, value.reshape(-1)[0].item(), dtype=value.dtype, device=shape.device)


def _range(n: OnnxNode, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _cast(n: OnnxNode, x: Tensor) -> Tensor:
    return x.to(_DTYPES[int(n.attrs["to"])])


def _pad_index(size: int, begin: int, end: int, mode: str, device: torch.device) -> Tensor:
    idx = range(-begin, size + end)
    if mode == "edge":
        out = [min(max(i, 0), size - 1) for i in idx]
    elif mode == "wrap":
        out = [i % size for i in idx]
    else:  # reflect, without repeating the edge
        period = max(2 * (size - 1), 1)
        out = [i % period if i % period < size else period - i % period for i in idx]
    return torch.tensor(out, dtype=torch.long, device=device)


def _pad(n: OnnxNode, x: Tensor, pads: Tensor | None = None, value: Tensor | None = None,
         axes: Tensor | None = None) -> Tensor:
    """Pad: constant (any sign), reflect, edge, wrap; pads [b_1, ..., b_k, e_1, ..., e_k] over ``axes``."""
    p = _ints(pads, n, "pads") or []
    dims = [a % x.dim() for a in (_ints(axes, n, "axes") or range(x.dim()))]
    pairs = {a: (p[i], p[i + len(dims)]) for i, a in enumerate(dims)}
    mode = n.attrs.get("mode", "constant")
    if mode == "constant":
        fill = value.item() if value is not None and value.numel() else float(n.attrs.get("value", 0.0))
        return F.pad(x, _torch_pad([pairs.get(d, (0, 0)) for d in range(x.dim())]), value=fill)
    for a, (b, e) in pairs.items():
        if b or e:
            x = x.index_select(a, _pad_index(x.shape[a], b, e, mode, x.device))
    return x


def _reduce(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def op(n: OnnxNode, x: Tensor, axes: Tensor | None = None) -> Tensor:
        """Reduce over ``axes`` (input or attribute); none given: all dims unless noop_with_empty_axes."""
        dims = _ints(axes, n, "axes")
        if not dims:
            if n.attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        return fn(x, dim=tuple(d % x.dim() for d in dims), keepdim=bool(n.attrs.get("keepdims", 1)))
    return op


# ----------------------------------------------------------------------------------------------- Resize


def _source_coords(mode: str, size_in: int, size_out: int, scale: float, device: torch.device) -> Tensor:
    """Input coordinate (float32) of each output index along one axis."""
    i = torch.arange(size_out, dtype=torch.float32, device=device)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and size_out > 1):
        return (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = size_in / 2 * (1 - size_out / (scale * size_in))
        return offset + (i + 0.5) / scale - 0.5
    if mode == "align_corners" and size_out > 1:
        return i * ((size_in - 1) / (size_out - 1))
    return torch.zeros_like(i)


def _resize_axis(n: OnnxNode, x: Tensor, axis: int, size_out: int, scale: float) -> Tensor:
    size_in = x.shape[axis]
    mode = n.attrs.get("coordinate_transformation_mode", "half_pixel")
    c = _source_coords(mode, size_in, size_out, scale, x.device)
    if n.attrs.get("mode", "nearest") == "nearest":
        rounding = {"floor": torch.floor, "ceil": torch.ceil, "round_prefer_floor": lambda v: torch.ceil(v - 0.5),
                    "round_prefer_ceil": lambda v: torch.floor(v + 0.5)}
        idx = rounding[n.attrs.get("nearest_mode", "round_prefer_floor")](c).long().clamp(0, size_in - 1)
        return x.index_select(axis, idx)
    c = c.clamp(0, size_in - 1)
    lo = torch.floor(c).long()
    hi = (lo + 1).clamp(max=size_in - 1)
    shape = [1] * x.dim()
    shape[axis] = -1
    w = (c - lo).to(x.dtype).reshape(shape)
    return x.index_select(axis, lo) * (1 - w) + x.index_select(axis, hi) * w


def _resize(n: OnnxNode, x: Tensor, roi: Tensor | None = None, scales: Tensor | None = None,
            sizes: Tensor | None = None) -> Tensor:
    """Resize (nearest / linear, separable per axis) by ``scales`` or to ``sizes``."""
    axes = [a % x.dim() for a in n.attrs.get("axes", range(x.dim()))]
    dims_in = torch.tensor([x.shape[a] for a in axes], dtype=torch.float32)
    if sizes is not None and sizes.numel():
        out = [int(v) for v in sizes.tolist()]
        factors = (torch.tensor(out, dtype=torch.float32) / dims_in).tolist()
    else:
        factors_t = scales.detach().to("cpu", torch.float32).reshape(-1)
        out = [int(v) for v in torch.floor(dims_in * factors_t).tolist()]
        factors = factors_t.tolist()
    for a, size_out, scale in zip(axes, out, factors, strict=False):
        if size_out != x.shape[a] or scale != 1.0:
            x = _resize_axis(n, x, a, size_out, scale)
    return x


# ----------------------------------------------------------------------------------------------- the table


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda n, x: fn(x)


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda n, a, b: fn(a, b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def op(n: OnnxNode, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return op


def _dropout(n: OnnxNode, x: Tensor, *_: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
    """Dropout at inference: identity (and an all-true mask if asked for)."""
    return (x, torch.ones_like(x, dtype=torch.bool)) if n.n_outputs > 1 else x


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": _global(torch.mean), "GlobalMaxPool": _global(torch.amax),
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "Gemm": _gemm,
    "MatMul": _binary(torch.matmul), "Add": _binary(torch.add), "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul), "Div": _div, "Pow": lambda n, a, b: torch.pow(a, b).to(a.dtype),
    "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, float(n.attrs.get("alpha", 0.01))), "PRelu": _prelu,
    "Elu": lambda n, x: F.elu(x, float(n.attrs.get("alpha", 1.0))), "Selu": _selu,
    "HardSigmoid": lambda n, x: torch.clamp(x * float(n.attrs.get("alpha", 0.2)) + float(n.attrs.get("beta", 0.5)),
                                            0.0, 1.0),
    "HardSwish": _unary(F.hardswish), "Gelu": lambda n, x: F.gelu(x, approximate=n.attrs.get("approximate", "none")),
    "Softplus": _unary(F.softplus), "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Clip": _clip, "Erf": _unary(torch.erf), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal), "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil),
    "Sin": _unary(torch.sin), "Cos": _unary(torch.cos), "Not": _unary(torch.logical_not),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt), "GreaterOrEqual": _binary(torch.ge), "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or), "Where": lambda n, c, a, b: torch.where(c.bool(), a, b),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Concat": _concat, "Split": _split,
    "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Shape": _shape, "Gather": _gather,
    "Expand": _expand, "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Identity": _unary(lambda x: x), "Dropout": _dropout, "Cast": _cast, "Pad": _pad, "Resize": _resize,
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum), "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin), "Einsum": lambda n, *xs: torch.einsum(n.attrs["equation"], *xs),
}

# ONNX TensorProto data types -> torch dtypes (Cast targets, initializers).
_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
    16: torch.bfloat16,
}
_FLOAT_TYPES = {1, 10, 11, 16}

# Input slots whose float initializers are weights (parameters); the names they get on the node.
_WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2), "PRelu": (1,), "Expand": (0,),
}
_ANY_SLOT_RANK1 = {"Add", "Sub", "Mul", "Div", "Concat", "Einsum"}  # weights when rank >= 1
_SLOT_NAMES: dict[str, tuple[str, ...]] = {
    "Conv": ("input", "weight", "bias"), "ConvTranspose": ("input", "weight", "bias"),
    "Gemm": ("weight_a", "weight", "bias"), "MatMul": ("weight_a", "weight"),
    "BatchNormalization": ("input", "weight", "bias", "running_mean", "running_var"),
    "LayerNormalization": ("input", "weight", "bias"), "PRelu": ("input", "weight"),
}


# ----------------------------------------------------------------------------------------------- checks


def _check_resize(attrs: dict[str, Any], opset: int) -> str | None:
    if opset < 11:
        return "Resize before opset 11"
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if attrs.get("mode", "nearest") not in ("nearest", "linear"):
        return f"Resize mode {attrs.get('mode')!r} (nearest and linear are supported)"
    if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"):
        return f"Resize coordinate_transformation_mode {ctm!r}"
    if attrs.get("antialias", 0):
        return "Resize antialias=1"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return f"Resize keep_aspect_ratio_policy {attrs['keep_aspect_ratio_policy']!r}"
    return None


def _check_node(op: str, attrs: dict[str, Any], opset: int, outputs: list[str]) -> str | None:
    """A refusal for attribute values this interpreter does not implement exactly, else None."""
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"{op} auto_pad {attrs['auto_pad']!r}"
    if op == "Resize":
        return _check_resize(attrs, opset)
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {attrs['mode']!r}"
    if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        return "AveragePool with dilations"
    if op == "MaxPool" and len(outputs) > 1 and outputs[1]:
        return "MaxPool's Indices output"
    if op == "BatchNormalization" and (attrs.get("training_mode", 0) or not attrs.get("spatial", 1)
                                       or any(outputs[1:])):
        return "BatchNormalization in training mode (or spatial=0)"
    if op == "Cast" and int(attrs.get("to", 0)) not in _DTYPES:
        return f"Cast to ONNX data type {attrs.get('to')}"
    if op == "Constant" and not any(k in attrs for k in ("value", "value_float", "value_floats", "value_int",
                                                            "value_ints")):
        return f"Constant with {', '.join(attrs) or 'no value'}"
    if op == "Gelu" and attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"Gelu approximate {attrs['approximate']!r}"
    return None


def _unsupported(graph: onnx.GraphProto) -> str:
    """'' when every node is a supported default-domain op, else what is not."""
    ops = sorted({nd.op_type for nd in graph.node if nd.domain in ("", "ai.onnx") and nd.op_type not in _OPS})
    foreign = sorted({f"{nd.domain}.{nd.op_type}" for nd in graph.node if nd.domain not in ("", "ai.onnx")})
    problems = []
    if ops:
        problems.append(f"unsupported ONNX operators: {', '.join(ops)} (supported: {', '.join(sorted(_OPS))})")
    if foreign:
        problems.append(f"operators from non-default domains are not supported: {', '.join(foreign)}")
    return "; ".join(problems)


# ----------------------------------------------------------------------------------------------- loading


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise ModelError(f"reading ONNX models needs the {name} package: {_INSTALL}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load(onnx: Any, source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str, str | None]:
    """(model, label for messages, path or None)."""
    if isinstance(source, onnx.ModelProto):
        return source, f"ONNX model {source.graph.name or '(unnamed)'!r}", None
    if not isinstance(source, (str, Path)):
        raise ModelError(f"expected an ONNX file path or onnx.ModelProto, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types on garbage
        raise ModelError(f"{path}: not an ONNX file ({_one_line(exc)})") from exc
    return model, str(path), str(path)


def _validate(onnx: Any, model: onnx.ModelProto, label: str, path: str | None) -> int:
    """Refuse what this interpreter cannot run exactly; returns the default-domain opset."""
    problems = _unsupported(model.graph)
    try:
        onnx.checker.check_model(path if path is not None else model)
    except Exception as exc:  # ValidationError and friends
        raise ModelError(f"{label}: {problems or 'not a valid ONNX model: ' + _one_line(exc)}") from exc
    if problems:
        raise ModelError(f"{label}: {problems}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise ModelError(f"{label}: ONNX opset {opset} is older than {_MIN_OPSET}; re-export the model")
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelError(f"{label}: the graph must have one input and one output, it has {len(inputs)} inputs "
                         f"({', '.join(inputs)}) and {len(model.graph.output)} outputs")
    refused = [f"{nd.name or nd.op_type}: {msg}" for nd in model.graph.node
               if (msg := _check_node(nd.op_type, _attributes(onnx, nd), opset, list(nd.output)))]
    if refused:
        raise ModelError(f"{label}: unsupported ONNX attribute values: {'; '.join(refused)}")
    return opset


def _to_torch(onnx: Any, t: onnx.TensorProto) -> Tensor:
    """A TensorProto as a torch tensor (a copy)."""
    if t.data_type == 16:  # bfloat16: numpy has none
        return torch.from_numpy(onnx.numpy_helper.to_array(t).astype("float32")).to(torch.bfloat16)
    if t.data_type not in _DTYPES:
        raise ModelError(f"tensor {t.name!r} has ONNX data type {t.data_type}, which torch cannot hold")
    return torch.from_numpy(onnx.numpy_helper.to_array(t).copy()).to(_DTYPES[t.data_type])


def _attributes(onnx: Any, node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = _to_torch(onnx, v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _constant_value(attrs: dict[str, Any]) -> Tensor:
    if "value" in attrs:
        return attrs.pop("value")
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs.pop(key), dtype=dtype)
    raise ModelError("Constant without a value")


def _slot_name(op: str, slot: int) -> str:
    names = _SLOT_NAMES.get(op, ())
    if slot < len(names):
        return names[slot]
    return {"Add": "bias", "Sub": "bias", "Mul": "weight", "Div": "weight"}.get(op, f"const{slot}")


def _is_weight(op: str, slot: int, t: onnx.TensorProto) -> bool:
    if t.data_type not in _FLOAT_TYPES:
        return False
    return slot in _WEIGHT_SLOTS.get(op, ()) or (op in _ANY_SLOT_RANK1 and len(t.dims) >= 1)


def _build(onnx: Any, model: onnx.ModelProto, opset: int, label: str) -> OnnxModule:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(v for nd in graph.node for v in nd.input if v in inits)
    uses.update(o.name for o in graph.output if o.name in inits)
    weights = {v for nd in graph.node for i, v in enumerate(nd.input)
               if v in inits and _is_weight(nd.op_type, i, inits[v])}
    real_input = next(i.name for i in graph.input if i.name not in inits)
    module = OnnxModule(real_input, graph.output[0].name)
    for name in sorted(v for v, k in uses.items() if k > 1 or v in {o.name for o in graph.output}):
        module.add_shared(name, _to_torch(onnx, inits[name]), name in weights)
    known = {real_input, *module._shared_values}
    for index, nd in enumerate(graph.node):
        attrs = _attributes(onnx, nd)
        node = OnnxNode(nd.op_type, _OPS[nd.op_type], attrs, opset, [], len(nd.output))
        if nd.op_type == "Constant":
            node.register_buffer("value", _constant_value(attrs))
        args = []
        for slot, v in enumerate(nd.input):
            if not v:
                node.slots.append(("none", ""))
            elif v in inits and v not in known:
                key = _slot_name(nd.op_type, slot)
                key = f"{key}_{slot}" if hasattr(node, key) else key
                value = _to_torch(onnx, inits[v])
                if v in weights:
                    node.register_parameter(key, nn.Parameter(value))
                else:
                    node.register_buffer(key, value)
                node.slots.append(("own", key))
            elif v in known:
                node.slots.append(("arg", ""))
                args.append(v)
            else:
                raise ModelError(f"{label}: node {nd.name or index} ({nd.op_type}) reads {v!r} before it is computed")
        module.add_node(nd.name, index, node, args, list(nd.output))
        known.update(o for o in nd.output if o)
    if module.output_name not in known:
        raise ModelError(f"{label}: the graph output {module.output_name!r} is never computed")
    return module


def onnx_to_torch(source: str | Path | onnx.ModelProto) -> OnnxModule:
    """Parse and check an ONNX classifier (a file or a ModelProto) into an ``OnnxModule``.

    Raises ``ModelError`` (one line, naming the file) for a missing or non-ONNX file, a graph with
    more than one input or output, unsupported operators (all listed) or attribute values.
    """
    onnx = _require("onnx")
    model, label, path = _load(onnx, source)
    try:
        opset = _validate(onnx, model, label, path)
        return _build(onnx, model, opset, label)
    except ModelError as exc:
        if str(exc).startswith(label):
            raise
        raise ModelError(f"{label}: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:  # a malformed graph
        raise ModelError(f"{label}: cannot interpret the ONNX graph ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None


def crosscheck(source: str | Path | onnx.ModelProto, module: nn.Module, x: Tensor, *, atol: float = 1e-4,
               rtol: float = 1e-3) -> float:
    """Max |module(x) - onnxruntime(x)|; ``ModelError`` beyond ``allclose(atol, rtol)``.

    x: (B, ...) float input; onnxruntime runs it as float32 on the CPU, the module on its own device.
    """
    ort = _require("onnxruntime")
    onnx = _require("onnx")
    if isinstance(source, onnx.ModelProto):
        label, payload = f"ONNX model {source.graph.name or '(unnamed)'!r}", source.SerializeToString()
    else:
        label = payload = str(source)
    try:
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.detach().to("cpu", torch.float32).numpy()}
        ref = torch.from_numpy(session.run(None, feed)[0]).float()
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{label}: onnxruntime cannot run the model ({_one_line(exc)})") from exc
    first = next(iter(module.parameters()), next(iter(module.buffers()), None))
    device = first.device if first is not None else x.device
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    with torch.no_grad():
        got = module(x.detach().to(device, dtype)).float().cpu()
    if got.shape != ref.shape:
        raise ModelError(f"{label}: the converted model's output shape {tuple(got.shape)} differs from "
                         f"onnxruntime's {tuple(ref.shape)}")
    diff = (got - ref).abs().max().item() if got.numel() else 0.0
    if not torch.allclose(got, ref, atol=atol, rtol=rtol):
        raise ModelError(f"{label}: the converted model differs from onnxruntime by {diff:.2g} "
                         f"(tolerance atol {atol}, rtol {rtol})")
    return diff
