"""Timing helpers shared by the benchmark modules: interleaved, warmed-up, repeated, median."""

from __future__ import annotations

import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch


def timeit_pair(fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Run every function ``warmup`` times, then ``repeats`` rounds interleaved (A, B, A, B...).

    Returns per name: median and all times in seconds, and the last result.
    """
    results: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(ts), "times_s": ts, "result": results[name]}
            for name, ts in times.items()}


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Peak Python-heap + torch CPU allocation of one call, in bytes (tracemalloc sees torch's
    CPU allocator only partly; rows say which measure they use)."""
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's measured fp32 matmul FLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu,
            "torch": torch.__version__, "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def row(work: str, peer: str, medxai_s: float | None, peer_s: float | None, *, target: float | None = None,
        agreement: float | None = None, agreement_kind: str = "max_abs_diff", images: int | None = None,
        note: str = "", **extra: Any) -> dict[str, Any]:
    """One comparison row; ``ratio`` = peer / medxai (> 1 means medxai is faster)."""
    ratio = (peer_s / medxai_s) if (medxai_s and peer_s) else None
    r = {"work": work, "peer": peer, "medxai_s": medxai_s, "peer_s": peer_s, "ratio": ratio,
         "target": target, "met": (ratio >= target) if (ratio is not None and target is not None) else None,
         "agreement": agreement, "agreement_kind": agreement_kind, "note": note}
    if images and medxai_s:
        r["medxai_images_per_s"] = images / medxai_s
    if images and peer_s:
        r["peer_images_per_s"] = images / peer_s
    r.update(extra)
    return r
