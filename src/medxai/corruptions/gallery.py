"""A PNG grid of corrupted examples: look at the corruptions before trusting their numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medxai._util.io import atomic_write
from medxai._util.plot import plain_text
from medxai._util.validate import check_images
from medxai.corruptions.base import REGISTRY, apply, list_corruptions


def example_fundus(size: int = 256) -> torch.Tensor:
    """scikit-image's real fundus photograph (``skimage.data.retina``), (1, 3, size, size) in [0, 1]."""
    import skimage.data
    import torch.nn.functional as F

    img = torch.from_numpy(np.asarray(skimage.data.retina(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return F.interpolate(img, size=(size, size), mode="area").clamp(0, 1)


@plain_text
def gallery(x: torch.Tensor, path: str | Path, names: Sequence[str] | None = None,
            severities: Sequence[int] | None = None, seed: int = 0) -> Path:
    """Write a grid: one row per corruption, columns clean + each severity, for the first image of x.

    ``names``: default every registered corruption; ``severities``: default 1..5 (cells beyond a
    corruption's maximum stay empty). Returns the path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_images(x, "x")
    img = x[:1]
    names = list(names) if names is not None else list_corruptions()
    sev = list(severities) if severities is not None else [1, 2, 3, 4, 5]
    cols = [0, *sev]
    fig, axes = plt.subplots(len(names), len(cols), figsize=(1.5 * len(cols), 1.55 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        top = REGISTRY.get(name).max_severity
        for c, s in enumerate(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if s > top:
                continue
            out = apply(img, name, s, seed=seed)[0].detach().cpu().permute(1, 2, 0).numpy()
            ax.imshow(out[..., 0] if out.shape[2] == 1 else out, cmap="gray" if out.shape[2] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title("clean" if s == 0 else f"{name} {s}", fontsize=6, pad=2)
    # each label closer to its own image than to the row above; a single row needs room for its titles
    fig.tight_layout(pad=0.2 if len(names) > 1 else 0.6, h_pad=1.2)
    path = Path(path)

    def write(p: Path) -> None:
        fig.savefig(p, format="png", dpi=110)

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return path
