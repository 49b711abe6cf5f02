"""Figures and image assets the audit writes (PNG files embedded later by the report)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from medxai._util.io import atomic_write
from medxai._util.plot import plain_text

from .data import EvalSample


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def _label_text(y: torch.Tensor, class_names: list[str], task: str) -> str:
    if task == "multilabel":
        pos = [class_names[i] for i, v in enumerate(y.tolist()) if v == v and v >= 0.5]
        return ", ".join(pos) or "no finding"
    return class_names[int(y)]


def _show(ax: plt.Axes, img: torch.Tensor) -> None:
    arr = img.detach().cpu().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(arr)
    ax.axis("off")


@plain_text
def data_examples(s: EvalSample, class_names: list[str], task: str, path: Path) -> None:
    """A row of test images with their lesion masks (red) and shortcut markers (yellow) outlined."""
    n = len(s)
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        _show(ax, s.x[i])
        if s.masks is not None:
            m = s.masks[i].any(0).float().numpy()
            if m.any():
                ax.contour(m, levels=[0.5], colors="red", linewidths=0.8)
        if s.shortcut_masks is not None:
            m = s.shortcut_masks[i].any(0).float().numpy()
            if m.any():
                ax.contour(m, levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(_label_text(s.y[i], class_names, task), fontsize=7)
    _save(fig, path)


def image_png(img: torch.Tensor, path: Path) -> None:
    """One image (C, H, W) in [0, 1] as an 8-bit PNG."""
    arr = (img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    arr = arr[..., 0] if arr.shape[2] == 1 else arr
    atomic_write(path, lambda p: Image.fromarray(arr).save(p, format="PNG"))


def heat_png(m: torch.Tensor, vmax: float, path: Path, *, signed: bool = False) -> None:
    """A map (H, W) as an RGBA heat-map PNG on a fixed scale [0, vmax] (or [-vmax, vmax] if signed).

    Alpha grows with the value so the image shows through where the map is weak.
    """
    a = m.detach().cpu().double().numpy()
    vmax = vmax if vmax > 0 else 1.0
    if signed:
        v = np.clip(a / vmax, -1, 1)
        rgba = colormaps["RdBu_r"]((v + 1) / 2)
        rgba[..., 3] = np.abs(v) ** 0.7
    else:
        v = np.clip(a / vmax, 0, 1)
        rgba = colormaps["inferno"](v)
        rgba[..., 3] = v ** 0.7
    arr = (rgba * 255).round().astype(np.uint8)
    atomic_write(path, lambda p: Image.fromarray(arr, mode="RGBA").save(p, format="PNG"))


@plain_text
def explanation_grid(images: torch.Tensor, maps: dict[tuple[str, str], torch.Tensor], models: list[str],
                     methods: list[str], scales: dict[str, float], path: Path, labels: list[str],
                     captions: dict[tuple[str, str], list[str]] | None = None) -> None:
    """Rows = images (or image x explained finding); columns = method x model, one colour scale per
    method across models; ``captions`` names under each map the finding it explains."""
    n = images.shape[0]
    cols = [(me, mo) for me in methods for mo in models if (mo, me) in maps]  # unavailable pairs left out
    fig, axes = plt.subplots(n, len(cols) + 1, figsize=(1.5 * (len(cols) + 1), 1.75 * n), squeeze=False)
    for i in range(n):
        _show(axes[i][0], images[i])
        axes[i][0].set_title(labels[i], fontsize=6)
        for j, (me, mo) in enumerate(cols, start=1):
            ax = axes[i][j]
            _show(ax, images[i])
            m = maps[(mo, me)][i, 0].detach().cpu().numpy()
            ax.imshow(np.clip(m / (scales[me] or 1.0), 0, 1), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
            if i == 0:
                ax.set_title(f"{me}\n{mo}", fontsize=6)
            cap = (captions or {}).get((mo, me))
            if cap:
                ax.text(0.5, -0.04, f"explains: {cap[i]}", transform=ax.transAxes, ha="center", va="top", fontsize=5)
    _save(fig, path)


@plain_text
def class_means_figure(means: dict[str, np.ndarray], path: Path) -> None:
    """One panel per class: the mean normalised attribution map of its images, one colour scale."""
    vmax = max((float(m.max()) for m in means.values()), default=1.0) or 1.0
    fig, axes = plt.subplots(1, len(means), figsize=(2.2 * len(means), 2.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], means.items(), strict=True):
        ax.imshow(m, cmap="inferno", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle("mean attribution map per class", fontsize=9)
    _save(fig, path)
