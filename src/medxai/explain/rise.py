"""RISE (Petsiuk, Das & Saenko 2018): randomized input sampling, on the masked-forward engine.

``S(p) = 1 / (N * p1) * sum_i f(x * M_i) M_i(p)`` with N random masks: a binary s x s grid
(each cell on with probability p1), bilinearly upsampled to ``(s + 1) * ceil(H / s)`` px and
cropped at a random shift in ``[0, ceil(H / s))`` (the authors' ``generate_masks``; their skimage
``resize(order=1, mode="reflect")`` is torch bilinear, align_corners=False, here: the two differ
only in the border half-cell). The masks are drawn from a seeded generator, shared by every image
of the batch, and built chunk by chunk (never all N x H x W at once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import InputError
from medxai.explain.base import Attribution
from medxai.explain.engine import (
    DEFAULT_MEMORY_BUDGET,
    InputBuffer,
    chunk_size_for,
    perturbed_outputs,
    sample_runs,
)
from medxai.explain.registry import REGISTRY

__all__ = ["RISE", "RiseMasks", "rise_masks"]


class RiseMasks:
    """The N masks of one seed and size, built on demand: ``masks[idx] -> (len(idx), *size)``.

    ``size`` (H, W) or, for volumes, (D, H, W): an s x s (x s) grid, bilinearly (trilinearly)
    upsampled and cropped at a random shift along every axis.
    """

    def __init__(self, n_masks: int, size: tuple[int, ...], *, s: int = 8, p: float = 0.5, seed: int = 0,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        if n_masks < 1 or s < 1 or not 0 < p <= 1:
            raise InputError(f"RISE needs n_masks >= 1, s >= 1 and 0 < p <= 1; got {n_masks}, {s}, {p}")
        if len(size) not in (2, 3):
            raise InputError(f"RISE masks are 2-D (H, W) or 3-D (D, H, W), got size {tuple(size)}")
        self.size, self.s, self.p, self.dtype = tuple(int(v) for v in size), s, p, dtype
        self.cell = tuple(math.ceil(v / s) for v in self.size)
        self.up = tuple((s + 1) * c for c in self.cell)
        g = torch.Generator().manual_seed(seed)
        self.grids = (torch.rand(n_masks, 1, *([s] * len(size)), generator=g) < p).to(device=device, dtype=dtype)
        self.shifts = torch.stack([torch.randint(0, c, (n_masks,), generator=g) for c in self.cell], 1).to(device)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, device=self.grids.device).reshape(-1)
        mode = "bilinear" if len(self.size) == 2 else "trilinear"
        up = F.interpolate(self.grids[idx], size=self.up, mode=mode, align_corners=False)[:, 0]
        up = up.clamp_(0, 1)  # bilinear rounding can give 1 + 1 ulp
        for a, n in enumerate(self.size):  # crop each axis at the mask's shift
            take = self.shifts[idx, a, None] + torch.arange(n, device=up.device)  # (m, n)
            shape = [len(idx), *([1] * a), n, *([1] * (up.ndim - 2 - a))]
            full = list(up.shape)
            full[a + 1] = n
            up = up.gather(a + 1, take.view(shape).expand(full))
        return up


def rise_masks(n_masks: int, size: tuple[int, ...], *, s: int = 8, p: float = 0.5, seed: int = 0,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All N RISE masks (N, H, W) (or (N, D, H, W)) in [0, 1], exactly those ``RISE(seed=seed)`` uses at this size."""
    m = RiseMasks(n_masks, size, s=s, p=p, seed=seed, device=device, dtype=dtype)
    return m[torch.arange(n_masks)]


@REGISTRY.register("rise")
class RISE(Attribution):
    """RISE saliency (B, 1, H, W) per target; volumes (B, C, D, H, W) give (B, 1, D, H, W) from 3-D
    masks (an s^3 grid upsampled trilinearly, shifted along every axis).

    Args:
        model: classifier returning logits (B, K).
        n_masks: N (4000 as in the paper for ResNet-50). s: grid size (8). p: keep probability (0.5).
        seed: mask seed. output: "softmax" (default: the paper weights masks by the class
            probability), "sigmoid" or "logit".
        batch_size / memory_budget: images per model call.
        channels_last: lay perturbed batches out NHWC (None: on CPU for a model with convolutions, which run faster so).
    """

    needs_grad = False
    image_ndims = (4, 5)

    def __init__(self, model: nn.Module, *, n_masks: int = 4000, s: int = 8, p: float = 0.5, seed: int = 0,
                 output: str = "softmax", batch_size: int | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool | None = None) -> None:
        super().__init__(model, output=output)
        self.n_masks, self.s, self.p, self.seed = n_masks, s, p, seed
        self.batch_size, self.memory_budget = batch_size, memory_budget
        self.channels_last = channels_last

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        b, sp = x.shape[0], tuple(x.shape[2:])
        masks = RiseMasks(self.n_masks, sp, s=self.s, p=self.p, seed=self.seed if seed is None else seed,
                          device=x.device, dtype=x.dtype)

        buffer = InputBuffer(x, self.channels_last, self.model)

        def make(si: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
            out = buffer(len(si))
            for b, sl in sample_runs(si):
                torch.mul(x[b], masks[pi[sl]][:, None], out=out[sl])
            return out

        out = perturbed_outputs(self.model, x, self.n_masks, make, targets, output=self.output,
                                batch_size=self.batch_size, memory_budget=self.memory_budget)  # (B, N, T)
        sal = torch.zeros(b, targets.shape[1], math.prod(sp), dtype=x.dtype, device=x.device)
        step = chunk_size_for(x[:, :1], self.memory_budget)
        for start in range(0, self.n_masks, step):
            idx = torch.arange(start, min(start + step, self.n_masks), device=x.device)
            sal += torch.einsum("bnt,np->btp", out[:, idx], masks[idx].flatten(1))
        return (sal / (self.n_masks * self.p)).view(b, targets.shape[1], 1, *sp)
