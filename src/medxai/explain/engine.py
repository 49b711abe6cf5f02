"""The batched masked-forward engine: many perturbed copies of each image through the model.

One engine serves occlusion, LIME, RISE and the deletion / insertion / ROAD metrics: the caller
says how to build perturbed inputs for (sample, perturbation) pairs; the engine flattens all
B x P pairs, builds and runs them in chunks bounded by a memory budget, under ``no_grad``, and
gathers the requested outputs. Nothing leaves torch and the device of ``x``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.base import select_output

#: make_inputs(sample_idx (M,), perturbation_idx (M,)) -> perturbed images (M, C, H, W)
MakeInputs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of perturbed input per chunk


def chunk_size_for(x: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                   max_batch: int | None = None, factor: float = 1.0) -> int:
    """How many images (C, H, W) of ``x`` fit in ``memory_budget`` bytes (at least 1).

    ``factor`` accounts for memory per image beyond the input itself (activations).
    """
    per_image = x[0].numel() * x.element_size() * max(factor, 1.0)
    n = max(1, int(memory_budget // per_image))
    return min(n, max_batch) if max_batch else n


def sample_runs(si: torch.Tensor) -> list[tuple[int, slice]]:
    """Split a chunk's sample indices into ``(sample, slice of the chunk)`` runs.

    The engine's chunks are sample-major (flat index = sample * P + perturbation), so a chunk holds
    a few contiguous runs; ``make_inputs`` can build each run from one image by broadcasting instead
    of gathering a copy of the image per perturbation.
    """
    vals, counts = torch.unique_consecutive(si, return_counts=True)
    runs, start = [], 0
    for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
        runs.append((int(v), slice(start, start + c)))
        start += c
    return runs


class InputBuffer:
    """A reusable (n, C, H, W) batch like ``x`` for ``make_inputs`` to fill in place.

    Reusing one buffer across chunks avoids re-faulting fresh pages for every chunk (several ms per
    chunk of 64 images at 128 px on CPU). Safe because the engine consumes each chunk's outputs
    before it asks for the next inputs. ``channels_last`` (None: on CPU) lays the batch out NHWC,
    which oneDNN convolutions run faster than NCHW (same values up to float rounding).
    """

    def __init__(self, x: torch.Tensor, channels_last: bool | None = None) -> None:
        self.x, self.buf = x, None
        if channels_last is None:
            channels_last = x.device.type == "cpu"
        self.fmt = torch.channels_last if channels_last and x.ndim == 4 else torch.contiguous_format

    def __call__(self, n: int) -> torch.Tensor:
        if self.buf is None or self.buf.shape[0] < n:
            self.buf = torch.empty((n, *self.x.shape[1:]), dtype=self.x.dtype, device=self.x.device,
                                   memory_format=self.fmt)
        return self.buf[:n]


def blend_into(out: torch.Tensor, keep: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               drop: torch.Tensor | None = None) -> torch.Tensor:
    """``out = a * keep + b * drop`` (broadcasting; ``drop`` defaults to ``1 - keep``).

    ``a`` where keep = 1, ``b`` where keep = 0, exactly (for finite a, b); on CPU ~20x faster than
    ``torch.where`` with a broadcast boolean mask.
    """
    torch.mul(keep, a, out=out)
    return out.addcmul_(1 - keep if drop is None else drop, b)


@torch.no_grad()
def perturbed_outputs(
    model: nn.Module,
    x: torch.Tensor,
    n_perturb: int,
    make_inputs: MakeInputs,
    targets: torch.Tensor | None = None,
    *,
    output: str = "logit",
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Run ``model`` on ``n_perturb`` perturbed copies of every sample of ``x``.

    Args:
        model: classifier returning logits (N, K); called in its current mode.
        x: (B, C, H, W) clean images (only shape/device/dtype are used here).
        n_perturb: P, perturbations per sample.
        make_inputs: builds the perturbed inputs for flat (sample, perturbation) index pairs.
        targets: None -> all outputs (B, P, K); (B,) -> (B, P); (B, T) -> (B, P, T).
        output: "logit" | "softmax" | "sigmoid".
        batch_size: images per model call; default from ``memory_budget``.

    Returns:
        Outputs on ``x.device`` in ``x.dtype``.
    """
    b = x.shape[0]
    if n_perturb < 1:
        raise InputError(f"n_perturb must be >= 1, got {n_perturb}")
    chunk = batch_size or chunk_size_for(x, memory_budget)
    total = b * n_perturb
    dev = x.device
    result: torch.Tensor | None = None
    flat_t: torch.Tensor | None = None
    if targets is not None:
        t2 = targets[:, None] if targets.ndim == 1 else targets
        flat_t = t2.to(dev).long().repeat_interleave(n_perturb, dim=0)  # (B*P, T)
    for start in range(0, total, chunk):
        flat = torch.arange(start, min(start + chunk, total), device=dev)
        si, pi = flat // n_perturb, flat % n_perturb
        out = select_output(model(make_inputs(si, pi)), output)
        if flat_t is not None:
            out = out.gather(1, flat_t[flat])
        if result is None:
            result = torch.empty((total, *out.shape[1:]), device=dev, dtype=out.dtype)
        result[flat] = out
    assert result is not None
    result = result.reshape(b, n_perturb, *result.shape[1:]).to(x.dtype)
    if targets is not None and targets.ndim == 1:
        result = result[..., 0]
    return result
