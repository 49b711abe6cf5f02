"""Tiny datasets and networks for the train/evaluate tests (not a conftest: imported explicitly)."""

from __future__ import annotations

import torch
from torch import nn


class TinySet(torch.utils.data.Dataset):
    """Dict items like medxai.data's: image (C, H, W) in [0, 1], label, id. The class is written
    as a bright square at a class-specific place, so a small CNN learns it in a few epochs.
    multilabel: one square per present finding; ``nan_rate`` blanks labels; ``soft`` replaces
    positives by U-Random-like values in [0.55, 0.85]."""

    def __init__(self, n: int, task: str = "binary", k: int = 2, size: int = 12, seed: int = 0,
                 nan_rate: float = 0.0, soft: bool = False, in_chans: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.task = task
        self.class_names = [f"c{j}" for j in range(k)]
        x = torch.rand(n, in_chans, size, size, generator=g) * 0.4
        spots = [(1 + 3 * (j % 3), 1 + 3 * (j // 3)) for j in range(k)]
        if task == "multilabel":
            y = (torch.rand(n, k, generator=g) < 0.4).float()
            for j, (r, c) in enumerate(spots):
                x[y[:, j] == 1, :, r:r + 3, c:c + 3] += 0.6
            if soft:
                u = 0.55 + 0.3 * torch.rand(n, k, generator=g)
                y = torch.where(y == 1, u, y)
            if nan_rate:
                y[torch.rand(n, k, generator=g) < nan_rate] = float("nan")
        else:
            y = torch.randint(0, k, (n,), generator=g)
            for j, (r, c) in enumerate(spots):
                x[y == j, :, r:r + 3, c:c + 3] += 0.6
        self.x, self.y = x.clamp(0, 1), y
        self.labels = y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "id": f"t{i:03d}"}


def tiny_net(k: int = 2, in_chans: int = 1, seed: int = 0, dropout: float = 0.1) -> nn.Module:
    """Conv + BatchNorm + dropout + linear: exercises running stats and the dropout RNG."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_chans, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout), nn.Linear(96, k))
