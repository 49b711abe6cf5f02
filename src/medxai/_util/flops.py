"""Counting a model's work: forward calls and images, input-backward images, FLOPs per image.

:class:`WorkMeter` puts a forward pre-hook on each model's top module. Per call it counts one call
and the first positional tensor's batch size (images); when that tensor requires gradients it
registers a tensor hook on it that counts the batch once each time a gradient reaches the input
(an *input-backward*: saliency, integrated gradients, PGD steps). Backward passes that stop at a
layer (Grad-CAM's gradient w.r.t. an activation) are not input-backwards and are not counted.
Calls of ``model.forward(...)`` directly (not ``model(...)``) bypass the hook and are not counted.
The hooks return None, so they change no value; :meth:`WorkMeter.close` removes them.

FLOPs are estimated, not measured per stage: forward images x F + input-backward images x 2F, with
F the model's FLOPs for one image measured once by ``torch.utils.flop_counter.FlopCounterMode``
(which counts a multiply-add as 2 FLOPs, matmul and convolution only) on a constant 0.5 image of
the data's shape; a backward is taken as ~ 2x its forward (gradients w.r.t. activations and weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BACKWARD_FACTOR", "WorkMeter", "flops_per_image"]

BACKWARD_FACTOR = 2.0  # FLOPs of one input-backward per image, in units of the forward's


def flops_per_image(model: nn.Module, shape: tuple[int, ...]) -> float | None:
    """FLOPs of one forward of ``model`` on one (1, *shape) image (``FlopCounterMode``), or None when
    they cannot be counted (e.g. TorchScript graphs that bypass the dispatcher count 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    t = next(iter([*model.parameters(), *model.buffers()]), None)  # _util imports no medxai package
    try:
        x = torch.full((1, *shape), 0.5, device=t.device if t is not None else "cpu")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        total = float(counter.get_total_flops())
    except Exception:  # a model the counter cannot trace is reported as not counted
        return None
    return total if total > 0 else None


class WorkMeter:
    """Per-model counters of forward calls, forward images and input-backward images (see the module)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.flops: dict[str, float | None] = {}
        self._handles: list[Any] = []

    def __contains__(self, name: str) -> bool:
        return name in self.counts

    def attach(self, name: str, model: nn.Module, shape: tuple[int, ...] | None = None) -> None:
        """Count ``model``'s work under ``name`` (FLOPs per image measured first, on ``shape``)."""
        if name in self.counts:
            return
        self.flops[name] = flops_per_image(model, shape) if shape is not None else None
        c = self.counts[name] = {"calls": 0, "images": 0, "backward_images": 0}

        def on_backward(n: int) -> Any:
            def hook(grad: torch.Tensor) -> None:
                c["backward_images"] += n

            return hook

        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            c["calls"] += 1
            if x is None:
                return
            n = int(x.shape[0]) if x.ndim else 1
            c["images"] += n
            if x.requires_grad and torch.is_grad_enabled():
                x.register_hook(on_backward(n))

        try:
            self._handles.append(model.register_forward_pre_hook(pre_hook))
        except (RuntimeError, AttributeError):  # a module type that refuses hooks: counted as unknown
            self.counts[name] = {"calls": -1, "images": -1, "backward_images": -1}

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.counts.items()}

    def since(self, before: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
        """Work per model since ``before`` (a :meth:`snapshot`), with estimated FLOPs; models without work left out."""
        out: dict[str, dict[str, Any]] = {}
        for name, now in self.counts.items():
            if now["calls"] < 0:
                out[name] = {"calls": None, "images": None, "backward_images": None, "flops": None}
                continue
            was = before.get(name, {"calls": 0, "images": 0, "backward_images": 0})
            d = {k: now[k] - was[k] for k in now}
            if not d["calls"] and not d["backward_images"]:
                continue
            f = self.flops.get(name)
            d["flops"] = None if f is None else f * (d["images"] + BACKWARD_FACTOR * d["backward_images"])
            out[name] = d
        return out

    def close(self) -> None:
        """Remove every hook (the models are as they were)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
