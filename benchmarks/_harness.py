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


class _NoModuleTracker:
    """FlopCounterMode's module tracker without its hooks: every FLOP counts under "Global" (the total).
    torch 2.13's tracker breaks ``autograd.grad`` on a leaf input ("A leaf node was passed to
    _will_engine_execute_node"), which attacks and adversarial training call."""

    parents = frozenset({"Global"})

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> float | None:
    """FLOPs of one call (matmuls and convolutions, forward and backward) by torch's FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        fc.mod_tracker = _NoModuleTracker()  # only the total is needed
        with fc:
            fn()
        return float(fc.get_total_flops())
    except Exception:  # an op the counter cannot trace: the row goes without FLOP/s
        return None


def count_flops_fed(model: torch.nn.Module, fn: Callable[[], Any]) -> tuple[float | None, int | None]:
    """``count_flops(fn)`` and the largest batch (dim 0 of the first input) the call feeds ``model``: the
    chunk size a method really runs, for ``bare_rate`` (None: the call never ran ``model``)."""
    sizes: list[int] = []

    def pre(_m: torch.nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim:
            sizes.append(int(args[0].shape[0]))

    h = model.register_forward_pre_hook(pre)
    try:
        flops = count_flops(fn)
    finally:
        h.remove()
    return flops, (max(sizes) if sizes else None)


def batch_like(x: torch.Tensor, n: int | None) -> torch.Tensor:
    """``n`` rows cycled from ``x`` (B, ...): an input of the batch a method feeds its model (``x`` if None)."""
    return x if not n else x[torch.arange(n, device=x.device) % x.shape[0]]


def bare_pass_seconds(model: torch.nn.Module, x: torch.Tensor, *, backward: bool = False,
                      repeats: int = 3) -> tuple[Callable[[], None], float]:
    """The model's bare pass on ``x`` (a forward; ``backward``: forward plus the input gradient only, as
    gradient methods take it, no weight gradients and no .grad left) and its best time of ``repeats``
    after one warm-up call: (the pass, seconds)."""
    def once() -> None:
        if backward:
            xi = x.detach().clone().requires_grad_(True)
            torch.autograd.grad(model(xi).sum(), xi)
        else:
            with torch.no_grad():
                model(x)

    once()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        sync()
        best = min(best, time.perf_counter() - t0)
    return once, best


def bare_rate(model: torch.nn.Module, x: torch.Tensor, *, backward: bool = False, repeats: int = 3) -> float | None:
    """FLOP/s of the model's bare passes on ``x`` (B, C, H, W) (``bare_pass_seconds``), FLOPs by
    ``count_flops``. The attainable ceiling for a method whose work is these passes (None: not countable)."""
    once, seconds = bare_pass_seconds(model, x, backward=backward, repeats=repeats)
    flops = count_flops(once)
    return flops / seconds if flops else None


def flop_fields(model: torch.nn.Module, ours: Callable[[], Any], peer: Callable[[], Any] | None, x: torch.Tensor, *,
                backward: bool = False, repeats: int = 3, bares: dict | None = None) -> dict[str, Any]:
    """A row's FLOP keys (``row(**flop_fields(...))``): the model FLOPs of one untimed call of ``ours`` and
    of ``peer`` (None: a peer that is not torch-based), and the bare-pass rate (forward, or forward +
    input backward with ``backward``) at the largest batch ``ours`` feeds the model (``fed_batch``);
    ``bares`` caches rates per (batch, backward) across rows."""
    flops, fed = count_flops_fed(model, ours)
    key = (fed, backward)
    rate = bares.get(key) if bares is not None else None
    if rate is None and fed:
        rate = bare_rate(model, batch_like(x, fed), backward=backward, repeats=repeats)
        if bares is not None:
            bares[key] = rate
    return {"flops": flops, "peer_flops": count_flops(peer) if peer is not None else None,
            "bare_flops_per_s": rate, "fed_batch": fed}


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
        flops: float | None = None, peer_flops: float | None = None, bare_flops_per_s: float | None = None,
        note: str = "", miss_reason: str = "", **extra: Any) -> dict[str, Any]:
    """One comparison row; ``ratio`` = peer / medxai (> 1 means medxai is faster).

    ``target`` applies to ``target_on`` (``ratio`` or another key of the row, e.g.
    ``ratio_to_ideal`` or ``evaluations_ratio``); ``met`` is value >= target (or <= with
    ``higher_is_better=False``). ``tol``: the agreement the comparison must reach
    (``agreement_ok``: agreement <= tol). ``miss_reason`` is kept as ``reason`` when the target
    is missed. ``flops`` / ``peer_flops``: the model FLOPs of one medxai / peer call (``count_flops``);
    ``bare_flops_per_s``: the model's bare-pass FLOP/s at the row's batch (``bare_rate``). The row then
    gets both sides' GFLOP/s, their share of the bare rate, ``flop_ratio`` and ``ratio_limit``
    (``flop_keys``); a ratio target the FLOP limit makes impossible is restated (``restate_by_flops``).
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
    if flops or peer_flops or bare_flops_per_s:
        r.update(flop_keys(flops, peer_flops, bare_flops_per_s, medxai_s, peer_s))
    r.update(extra)
    value = r.get(target_on)
    r["met"] = None if (target is None or not finite(value)) else (
        value >= target if higher_is_better else value <= target)
    r["target_sense"] = ">=" if higher_is_better else "<="
    restate_by_flops(r)
    r["agreement_ok"] = None if (tol is None or agreement is None) else bool(
        finite(agreement) and agreement <= tol)
    if r["met"] is False and miss_reason:
        r["reason"] = miss_reason
    return r


SHARE_OF_BARE_TARGET = 0.8  # a restated target: medxai's model passes at >= 80 % of the bare passes' FLOP/s


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if (finite(a) and finite(b) and b) else None


def flop_keys(flops: float | None, peer_flops: float | None, bare_flops_per_s: float | None,
              medxai_s: float | None, peer_s: float | None) -> dict[str, float | None]:
    """FLOP efficiency of one row. F_m, F_p: FLOPs of one medxai / peer call; R: bare-pass FLOP/s;
    times in s. ``share_of_bare`` = (F / s) / R; ``flop_ratio`` = F_p / F_m; ``ratio_limit`` =
    peer_s * R / F_m, the ratio medxai would reach running every one of its FLOPs at the bare rate."""
    m_rate, p_rate = _div(flops, medxai_s), _div(peer_flops, peer_s)
    return {"flops": flops, "peer_flops": peer_flops, "bare_flops_per_s": bare_flops_per_s,
            "peer_gflop_per_s": None if p_rate is None else p_rate / 1e9,
            "bare_gflop_per_s": bare_flops_per_s / 1e9 if finite(bare_flops_per_s) else None,
            "flop_ratio": _div(peer_flops, flops),
            "medxai_share_of_bare": _div(m_rate, bare_flops_per_s),
            "peer_share_of_bare": _div(p_rate, bare_flops_per_s),
            "ratio_limit": _div(peer_s * bare_flops_per_s if finite(peer_s) and finite(bare_flops_per_s)
                                else None, flops)}


FLOP_MATCH = 0.01  # FLOP counts within 1 % are the same work (occlusion: one 1.6 MFLOP call in 268 GFLOP)


def restate_by_flops(r: dict[str, Any]) -> None:
    """A missed ratio target T above ``ratio_limit`` cannot be reached by any implementation of medxai's
    FLOPs: keep ``original_target`` = T (and the measured ratio), make the target medxai's share of
    the bare-pass rate >= ``SHARE_OF_BARE_TARGET``, recompute ``met`` and say why (``restated``)."""
    t, limit = r.get("target"), r.get("ratio_limit")
    if (r.get("target_on") != "ratio" or r.get("target_sense") != ">=" or r.get("met") is not False
            or not finite(t) or not finite(limit) or limit >= t):
        return
    share, f_m, rate, fr = r.get("medxai_share_of_bare"), r.get("flops"), r.get("bare_flops_per_s"), r.get("flop_ratio")
    if not (finite(f_m) and finite(rate)):  # a limit given without the FLOPs behind it: nothing to restate with
        return
    if finite(fr) and fr < 1 - FLOP_MATCH:  # medxai does more FLOPs: its own work, not the limit, is the miss
        return
    r.update(original_target=t, target=SHARE_OF_BARE_TARGET, target_on="medxai_share_of_bare",
             met=bool(share >= SHARE_OF_BARE_TARGET) if finite(share) else None,
             restated=(f"ratio target {t:g}x impossible: at the bare-pass rate ({rate / 1e9:.3g} GFLOP/s) "
                       f"medxai's {f_m / 1e9:.3g} GFLOP would take {f_m / rate:.3g} s against the peer's "
                       f"{r['peer_s']:.3g} s, limit {limit:.3g}x; restated as medxai_share_of_bare >= "
                       f"{SHARE_OF_BARE_TARGET:g}"))


def import_quantus():
    """Quantus 0.6.0 with ``np.trapz`` restored (numpy 2 removed it; Quantus' IROF still calls it)."""
    import numpy as np
    import quantus

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # noqa: NPY201
    return quantus
