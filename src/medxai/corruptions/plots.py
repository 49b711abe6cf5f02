"""The corruption table's heat map: per run, drop in the headline metric per corruption and level."""

from __future__ import annotations

from pathlib import Path

from medxai._util.plot import plain_text

__all__ = ["plot_drops"]


@plain_text
def plot_drops(results: dict[str, dict], path: Path) -> Path:
    """Heat map per run: rows corruptions, columns levels, cell = drop in the headline metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from medxai._util.io import atomic_write

    first = next(iter(results.values()))
    names = list(first["corruptions"])
    levels = sorted({int(s) for rows in first["corruptions"].values() for s in rows})
    mats = []
    for r in results.values():
        m = np.full((len(names), len(levels)), np.nan)
        for i, c in enumerate(names):
            for j, s in enumerate(levels):
                cell = r["corruptions"].get(c, {}).get(str(s))
                if cell is not None:
                    m[i, j] = cell["drop"][r["headline"]]
        mats.append(m)
    vmax = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0 for m in mats) or 1.0
    fig, axes = plt.subplots(1, len(mats), figsize=(1.0 + 0.75 * len(levels) * len(mats), 0.6 + 0.32 * len(names)),
                             squeeze=False)
    for ax, (run_name, r), m in zip(axes[0], results.items(), mats, strict=True):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(levels)), [str(s) for s in levels], fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"{run_name}: drop in {r['headline']}", fontsize=8)
        for i in range(len(names)):
            for j in range(len(levels)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path
