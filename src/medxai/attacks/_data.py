"""Turn what users pass as ``data`` into batches of (x, y) tensors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from medxai.errors import InputError


def _item_xy(item: Any) -> tuple[Any, Any]:
    if isinstance(item, dict):
        if "image" not in item or "label" not in item:
            raise InputError(f"data items must hold 'image' and 'label', got keys {sorted(item)}")
        return item["image"], item["label"]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise InputError(f"data items must be dicts with image/label or (x, y) pairs, got {type(item).__name__}")


def iter_batches(data: Any, batch_size: int = 64, device: torch.device | str | None = None,
                 limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x (B, C, H, W), y) batches from:

    - a pair ``(x, y)`` of tensors (split into ``batch_size`` chunks);
    - a map-style dataset (``__len__`` + ``__getitem__``) of dict items {"image", "label", ...}
      or (x, y) pairs, images (C, H, W);
    - any other iterable of batches (a DataLoader): dicts or (x, y) pairs, images (B, C, H, W).

    ``limit`` stops after that many samples.
    """
    seen = 0

    def emit(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise InputError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
        n = x.shape[0] if limit is None else min(limit, x.shape[0])
        for i in range(0, n, batch_size):
            yield emit(x[i:min(i + batch_size, n)], y[i:min(i + batch_size, n)])
        return
    is_loader = isinstance(data, torch.utils.data.DataLoader)
    if not is_loader and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if limit is None else min(limit, len(data))
        for i in range(0, n, batch_size):
            xs, ys = zip(*(_item_xy(data[j]) for j in range(i, min(i + batch_size, n))), strict=True)
            yield emit(torch.stack([torch.as_tensor(v) for v in xs]), torch.stack([torch.as_tensor(v) for v in ys]))
        return
    if not isinstance(data, Iterable):
        raise InputError(f"cannot read batches from {type(data).__name__}")
    for batch in data:
        x, y = _item_xy(batch)
        x, y = emit(x, y)
        if limit is not None:
            if seen >= limit:
                return
            x, y = x[:limit - seen], y[:limit - seen]
        seen += x.shape[0]
        yield x, y
