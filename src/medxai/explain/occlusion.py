"""Occlusion (Zeiler & Fergus 2014) with captum's semantics, on the batched masked-forward engine.

``attr(p) = mean over windows W containing p of [f(x) - f(x with W := baseline)]``.

Windows are hyper-rectangles over (C, H, W) like captum's ``sliding_window_shapes``: a window
(h, w) covers all channels, (c, h, w) occludes c channels at a time. Along each axis the window
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


def _as3(v: int | Sequence[int], channels: int, name: str) -> tuple[int, int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) == 2:
        t = (channels, *t)
    if len(t) != 3 or min(t) < 1:
        raise InputError(f"{name} must be an int, (h, w) or (c, h, w) of positive ints, got {v!r}")
    return t  # type: ignore[return-value]


def occlusion_windows(shape: tuple[int, int, int], window: Sequence[int], stride: Sequence[int],
                      device: torch.device | None = None) -> list[torch.Tensor]:
    """Per-axis coverage of every window position: three bool tensors (n_axis, size_axis).

    ``shape`` (C, H, W); ``window`` and ``stride`` are (c, h, w). The window at grid position
    (i, j, k) covers ``cover[0][i] x cover[1][j] x cover[2][k]``.
    """

    covers = []
    for size, win, st, axis in zip(shape, window, stride, "CHW", strict=True):
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


@REGISTRY.register("occlusion")
class Occlusion(Attribution):
    """Sliding-window occlusion: returns (B, C, H, W) per target, in the units of the output.

    Args:
        model: classifier returning logits (B, K).
        window: int, (h, w) (all channels) or (c, h, w) px; default ``min(16, min(H, W) // 4)``.
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

    def __init__(self, model: nn.Module, *, window: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None, baseline: float | torch.Tensor = 0.0,
                 output: str = "logit", batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool | None = None) -> None:
        super().__init__(model, output=output)
        self.window, self.stride, self.baseline = window, stride, baseline
        self.batch_size, self.memory_budget = batch_size, memory_budget
        self.channels_last = channels_last

    def _config(self, x: torch.Tensor, window, stride) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        c, h, w = x.shape[1:]
        window = self.window if window is None else window
        stride = self.stride if stride is None else stride
        if window is None:
            window = max(1, min(16, min(h, w) // 4))
        win = _as3(window, c, "window")
        if stride is None:
            stride = (win[0], max(1, win[1] // 2), max(1, win[2] // 2))
        elif isinstance(stride, int) or len(stride) == 2:
            stride = (win[0], *_as3(stride, c, "stride")[1:])
        return win, _as3(stride, c, "stride")

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
        cc, ch, cw = occlusion_windows(tuple(x.shape[1:]), win, st, x.device)
        nc, nh, nw = cc.shape[0], ch.shape[0], cw.shape[0]
        n_win = nc * nh * nw

        f = x.dtype
        cc_f, ch_f, cw_f = cc.to(f), ch.to(f), cw.to(f)

        buffer = InputBuffer(x, self.channels_last, self.model)

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            p = (pi - 1).clamp(min=0)  # perturbation 0 is the clean image
            kc, kh, kw = p // (nh * nw), (p // nw) % nh, p % nw
            occluded = (cc_f[kc][:, :, None, None] * ch_f[kh][:, None, :, None] * cw_f[kw][:, None, None, :]
                        * (pi > 0).to(f)[:, None, None, None])
            out = buffer(len(si))
            for b, sl in sample_runs(si):
                blend_into(out[sl], occluded[sl], base[b], x[b])
            return out

        out = perturbed_outputs(self.model, x, n_win + 1, make, targets, output=self.output,
                                batch_size=self.batch_size, memory_budget=self.memory_budget)
        diff = (out[:, :1] - out[:, 1:]).reshape(x.shape[0], nc, nh, nw, -1)  # (B, nc, nh, nw, T)
        attr = torch.einsum("bkmnt,kc,mi,nj->btcij", diff, cc_f, ch_f, cw_f)
        count = torch.einsum("kc,mi,nj->cij", cc_f, ch_f, cw_f)
        return attr / count
