"""Success rate (or another per-eps metric) against the budget, one line per model."""

from __future__ import annotations

from pathlib import Path

from medxai._util.plot import plain_text
from medxai.attacks.budget import format_eps

__all__ = ["plot_success"]


@plain_text
def plot_success(results: dict[str, dict], path: Path, metric: str = "success_rate") -> Path:
    """Success rate (or another per-eps metric) vs eps, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medxai._util.io import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.5))
    norm = next(iter(results.values()))["norm"]
    for name, r in results.items():
        ax.plot(r["eps"], r[metric], marker="o", label=name)
    eps = sorted({e for r in results.values() for e in r["eps"]})
    ax.set_xticks(eps, [format_eps(e, norm) for e in eps], fontsize=7, rotation=30)
    ax.set_xlabel(f"eps ({norm}, pixel units)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path
