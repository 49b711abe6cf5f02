"""Occlusion (Zeiler & Fergus 2014) with captum's semantics, on the batched masked-forward engine.

``attr(p) = mean over windows W containing p of [f(x) - f(x with W := baseline)]``.

Windows are hyper-rectangles over (C, H, W) like captum's ``sliding_window_shapes``: a window
(h, w) covers all channels, (c, h, w) occludes c channels at a time. Volumes (B, C, D, H, W)
take 3-D windows: (d, h, w) over all channels or (c, d, h, w) (captum's 4-D window shape). Along each axis the window
starts at 0, stride, 2 stride, ... for ``ceil((size - win) / stride) + 1`` positions, so the last
window may be cut off at the border when the stride does not divide ``size - win`` (captum's
convention). All windows of all samples go through the model in memory-bounded chunks; the
attributions are accumulated with one separable contraction, never a loop over windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.base import Attribution
from medxai.explain.engine import (
    DEFAULT_MEMORY_BUDGET,
    InputBuffer,
    blend_into,
    perturbed_outputs,
    sample_runs,
)
from medxai.explain.registry import REGISTRY

__all__ = ["Occlusion", "occlusion_windows"]


def _as_window(v: int | Sequence[int], channels: int, n_spatial: int, name: str) -> tuple[int, ...]:
    """An int (every spatial axis), a spatial tuple (all channels) or (c, *spatial) -> (c, *spatial)."""
    t = (int(v),) * n_spatial if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) == n_spatial:
        t = (channels, *t)
    if len(t) != n_spatial + 1 or min(t) < 1:
        lay = "(h, w) or (c, h, w)" if n_spatial == 2 else "(d, h, w) or (c, d, h, w)"
        raise InputError(f"{name} must be an int, {lay} of positive ints, got {v!r}")
    return t


def occlusion_windows(shape: tuple[int, ...], window: Sequence[int], stride: Sequence[int],
                      device: torch.device | None = None) -> list[torch.Tensor]:
    """Per-axis coverage of every window position: one bool tensor (n_axis, size_axis) per axis.

    ``shape`` (C, H, W) or (C, D, H, W); ``window`` and ``stride`` likewise. The window at grid
    position (i, j, k[, l]) covers the outer product ``cover[0][i] x cover[1][j] x ...``.
    """

    covers = []
    axes = "CHW" if len(shape) == 3 else "CDHW"
    for size, win, st, axis in zip(shape, window, stride, axes, strict=True):
        if win > size:
            raise InputError(f"occlusion window {tuple(window)} exceeds the input {tuple(shape)} along {axis}")
        if win < size and st > win:
            raise InputError(f"occlusion stride {st} is larger than the window {win} along {axis}: "
                             "some pixels would never be occluded")
        n = math.ceil((size - win) / st) + 1
        starts = torch.arange(n, device=device)[:, None] * st
        idx = torch.arange(size, device=device)[None, :]
        covers.append((idx >= starts) & (idx < starts + win))
    return covers


def _outer(covers: list[torch.Tensor], idx: list[torch.Tensor]) -> torch.Tensor:
    """(M, C, *S): for each of M windows the product of its per-axis coverages."""
    k = len(covers)
    out = None
    for a, (cov, i) in enumerate(zip(covers, idx, strict=True)):
        term = cov[i].view(-1, *([1] * a), cov.shape[1], *([1] * (k - 1 - a)))
        out = term if out is None else out * term
    return out


def _spread(diff: torch.Tensor, covers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """diff (B, n_0, .., n_k, T) -> (B, T, C, *S) summed over windows, and the window count (C, *S)."""
    letters = "klmnop"[: len(covers)]
    out_l = "cdefgh"[: len(covers)]
    ops = ",".join(f"{a}{o}" for a, o in zip(letters, out_l, strict=True))
    attr = torch.einsum(f"b{letters}t,{ops}->bt{out_l}", diff, *covers)
    count = torch.einsum(f"{ops}->{out_l}", *covers)
    return attr, count


@REGISTRY.register("occlusion")
class Occlusion(Attribution):
    """Sliding-window occlusion: returns (B, C, H, W) (volumes: (B, C, D, H, W)) per target, in the
    units of the output.

    Args:
        model: classifier returning logits (B, K).
        window: int, (h, w) (all channels) or (c, h, w) px; for volumes int, (d, h, w) or
            (c, d, h, w) voxels; default ``min(16, min(spatial) // 4)`` along every axis.
        stride: int, (h, w) or (c, h, w) px; default half the window. An int or pair uses the
            window's channel extent as channel stride (non-overlapping channel groups).
        baseline: value the window takes: a float or a tensor broadcastable to (B, C, H, W) in
            [0, 1]; default 0 (black).
        output: what is explained: "logit" (default, like captum on a logit model), "softmax",
            "sigmoid".
        batch_size / memory_budget: images per model call (default from the memory budget).
        channels_last: lay perturbed batches out NHWC (None: on CPU for a model with convolutions, which run faster so).
    """

    needs_grad = False
    image_ndims = (4, 5)

    def __init__(self, model: nn.Module, *, window: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None, baseline: float | torch.Tensor = 0.0,
                 output: str = "logit", batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool | None = None) -> None:
        super().__init__(model, output=output)
        self.window, self.stride, self.baseline = window, stride, baseline
        self.batch_size, self.memory_budget = batch_size, memory_budget
        self.channels_last = channels_last

    def _config(self, x: torch.Tensor, window, stride) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c, sp = x.shape[1], tuple(x.shape[2:])
        window = self.window if window is None else window
        stride = self.stride if stride is None else stride
        if window is None:
            window = max(1, min(16, min(sp) // 4))
        win = _as_window(window, c, len(sp), "window")
        if stride is None:
            stride = (win[0], *(max(1, w // 2) for w in win[1:]))
        elif isinstance(stride, int) or len(stride) == len(sp):
            stride = (win[0], *_as_window(stride, c, len(sp), "stride")[1:])
        return win, _as_window(stride, c, len(sp), "stride")

    def _baseline(self, x: torch.Tensor, baseline) -> torch.Tensor:
        baseline = self.baseline if baseline is None else baseline
        base = torch.as_tensor(baseline, device=x.device, dtype=x.dtype)
        try:
            base = torch.broadcast_to(base, x.shape)
        except RuntimeError as exc:
            raise InputError(f"baseline of shape {tuple(base.shape)} does not broadcast to {tuple(x.shape)}") from exc
        if not bool(torch.isfinite(base).all()) or float(base.min()) < 0 or float(base.max()) > 1:
            raise InputError("the occlusion baseline must be finite and in [0, 1]")
        return base

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, *, window=None, stride=None,
                   baseline=None) -> torch.Tensor:
        win, st = self._config(x, window, stride)
        base = self._baseline(x, baseline)
        f = x.dtype
        covers = [c.to(f) for c in occlusion_windows(tuple(x.shape[1:]), win, st, x.device)]
        grid = [c.shape[0] for c in covers]
        n_win = math.prod(grid)
        buffer = InputBuffer(x, self.channels_last, self.model)

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            p = (pi - 1).clamp(min=0)  # perturbation 0 is the clean image
            idx = []
            for n in reversed(grid):  # row-major unravel of the window index
                idx.append(p % n)
                p = p // n
            occluded = _outer(covers, idx[::-1]) * (pi > 0).to(f).view(-1, *([1] * (x.ndim - 1)))
            out = buffer(len(si))
            for b, sl in sample_runs(si):
                blend_into(out[sl], occluded[sl], base[b], x[b])
            return out

        out = perturbed_outputs(self.model, x, n_win + 1, make, targets, output=self.output,
                                batch_size=self.batch_size, memory_budget=self.memory_budget)
        diff = (out[:, :1] - out[:, 1:]).reshape(x.shape[0], *grid, -1)  # (B, n_c, n_h, n_w, T)
        attr, count = _spread(diff, covers)
        return attr / count
