"""Batched inference over a dataset: ids, truths and class probabilities.

Dataset items are dicts (``image`` float (C, H, W) in [0, 1], ``label``, optional ``id``) or
``(image, label)`` tuples. ``collate`` keeps only image, label and id, so optional fields
(masks, paths) never break batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medxai._util.validate import check_images
from medxai.errors import InputError


def _label_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    if isinstance(v, (int, np.integer)):
        return torch.tensor(int(v), dtype=torch.long)
    return torch.as_tensor(v)


def collate(items: Sequence[Any]) -> dict[str, Any]:
    """Stack a list of dataset items into ``{"image": (B, C, H, W), "label": (B,) | (B, K), "id": [...]}``."""
    images, labels, ids = [], [], []
    for it in items:
        if isinstance(it, dict):
            if "image" not in it or "label" not in it:
                raise InputError(f"dataset items need 'image' and 'label' keys, got {sorted(it)}")
            img, lab, ident = it["image"], it["label"], it.get("id")
        elif isinstance(it, (tuple, list)) and len(it) >= 2:
            img, lab, ident = it[0], it[1], None
        else:
            raise InputError(f"dataset items must be dicts or (image, label) tuples, got {type(it).__name__}")
        images.append(img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img)))
        labels.append(_label_tensor(lab))
        ids.append(None if ident is None else str(ident))
    shapes = [tuple(t.shape) for t in images]
    if len(set(shapes)) > 1:  # name the file (or id) whose image does not fit the batch, and the remedy
        first = shapes[0]
        j = next(i for i, sh in enumerate(shapes) if sh != first)
        raise InputError(f"cannot batch {_where(items, j)}: its image is {shapes[j]} but {_where(items, 0)}'s is "
                         f"{first}; "
                         "set size: (and channels:) in the dataset spec so that every image is resized alike")
    try:
        x = torch.stack(images)
        y = torch.stack(labels)
    except RuntimeError as exc:
        raise InputError(f"cannot batch dataset items (labels differ in shape?): {exc}") from None
    return {"image": x, "label": y, "id": ids}


def _where(items: Sequence[Any], i: int) -> str:
    """An item's file (or id) for an error message."""
    it = items[i]
    return str(it.get("path") or it.get("id") or f"item {i}") if isinstance(it, dict) else f"item {i}"


def dataset_task(data: Any, task: str | None = None) -> str:
    """The task given, or the dataset's ``.task`` attribute."""
    task = task or getattr(data, "task", None)
    if task is None:
        raise InputError("the task is unknown: pass task= or give the dataset a .task attribute")
    return str(task)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax over classes, or sigmoid per label for multilabel. (B, K) -> (B, K)."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode; restore each module's training flag on exit (also on error)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


def forward_all(model: nn.Module, data: Dataset | DataLoader, *, batch_size: int = 64,
                device: torch.device | str | None = None, num_workers: int = 0, autocast: Any = None,
                channels_last: bool = False) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Run ``model`` (in eval mode, no grad) over ``data``: (ids, labels, logits (N, K) float32 CPU)."""
    device = torch.device(device) if device is not None else model_device(model)
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    ids: list[str] = []
    ys, outs = [], []
    seen = 0
    with eval_mode(model), torch.inference_mode():
        for batch in loader:
            x = check_images(batch["image"], "image batch", ndim=(4, 5)).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast is not None else nullcontext():
                logits = model(x)
            outs.append(logits.float().cpu())
            ys.append(batch["label"].cpu())
            ids.extend(i if i is not None else str(seen + j) for j, i in enumerate(batch["id"]))
            seen += x.shape[0]
    if not outs:
        raise InputError("the dataset is empty")
    return ids, torch.cat(ys), torch.cat(outs)


def predict(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 64,
            device: torch.device | str | None = None, *, task: str | None = None,
            num_workers: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class probabilities of ``model`` on every item of ``data``.

    Returns ``ids`` (item ``id`` or its position), ``y_true`` ((N,) int64, or (N, K) float32 with
    NaN for multilabel) and ``scores`` ((N, K) float32: softmax, or sigmoid for multilabel).
    The model runs in eval mode on ``device`` (default: where its parameters are); its mode is
    restored afterwards. ``task`` defaults to ``data.task``.
    """
    task = dataset_task(data, task)
    moved = None
    if device is not None:
        here = model_device(model)
        if here != torch.device(device):
            moved = here
            model.to(device)
    try:
        ids, y, logits = forward_all(model, data, batch_size=batch_size, device=device, num_workers=num_workers)
    finally:
        if moved is not None:
            model.to(moved)
    scores = probabilities(logits, task).numpy()
    y_np = y.numpy().astype(np.float32 if task == "multilabel" else np.int64)
    return ids, y_np, scores
