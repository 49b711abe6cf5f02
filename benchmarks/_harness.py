"""Timing helpers shared by the benchmark modules: interleaved, warmed-up, repeated, median."""

from __future__ import annotations

import gc
import math
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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
            sync()
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


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise OSError(field)


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: return the free memory of every arena to the system (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_mb(fn: Callable[[], Any]) -> float | None:
    """Peak memory (MiB) one call adds: CUDA allocator peak, or the process's peak-RSS rise
    (``/proc/self/clear_refs`` resets the high-water mark; None where that is not allowed)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _malloc_trim()  # hand freed heap pages back, or a call that reuses them shows no rise at all
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss0 = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - rss0) / 1024
    except OSError:
        return None


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


def count_flops(fn: Callable[[], Any]) -> float | None:
    """FLOPs of one call (matmuls and convolutions, forward and backward) by torch's FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())
    except Exception:  # an op the counter cannot trace: the row goes without FLOP/s
        return None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": cpu,
            "torch": torch.__version__, "python": platform.python_version(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "bf16_hw": sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16", "amx_tile")),
            "load_1min": load}


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def row(work: str, peer: str | None, medxai_s: float | None, peer_s: float | None, *, target: float | None = None,
        target_on: str = "ratio", higher_is_better: bool = True, agreement: float | None = None,
        agreement_kind: str = "max_abs_diff", tol: float | None = None, images: int | None = None,
        flops: float | None = None, note: str = "", miss_reason: str = "", **extra: Any) -> dict[str, Any]:
    """One comparison row; ``ratio`` = peer / medxai (> 1 means medxai is faster).

    ``target`` applies to ``target_on`` (``ratio`` or another key of the row, e.g.
    ``ratio_to_ideal`` or ``evaluations_ratio``); ``met`` is value >= target (or <= with
    ``higher_is_better=False``). ``tol``: the agreement the comparison must reach
    (``agreement_ok``: agreement <= tol). ``miss_reason`` is kept as ``reason`` when the target
    is missed. ``flops``: the FLOPs of one medxai call (the table adds achieved FLOP/s and the share
    of the machine's matmul peak).
    """
    ratio = (peer_s / medxai_s) if (medxai_s and peer_s) else None
    r: dict[str, Any] = {"work": work, "peer": peer, "medxai_s": medxai_s, "peer_s": peer_s, "ratio": ratio,
                         "target": target, "target_on": target_on, "agreement": agreement,
                         "agreement_kind": agreement_kind, "tol": tol, "note": note}
    if images and medxai_s:
        r["medxai_images_per_s"] = images / medxai_s
    if images and peer_s:
        r["peer_images_per_s"] = images / peer_s
    if flops and medxai_s:
        r["medxai_gflop_per_s"] = flops / medxai_s / 1e9
    r.update(extra)
    value = r.get(target_on)
    r["met"] = None if (target is None or not finite(value)) else (
        value >= target if higher_is_better else value <= target)
    r["target_sense"] = ">=" if higher_is_better else "<="
    r["agreement_ok"] = None if (tol is None or agreement is None) else bool(
        finite(agreement) and agreement <= tol)
    if r["met"] is False and miss_reason:
        r["reason"] = miss_reason
    return r


def import_quantus():
    """Quantus 0.6.0 with ``np.trapz`` restored (numpy 2 removed it; Quantus' IROF still calls it)."""
    import numpy as np
    import quantus

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # noqa: NPY201
    return quantus
