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
