"""Synthetic study generation speed: images per second on one thread (numpy), target 500 at 128 px.

No peer exists (the studies are medxai's own); rows report throughput against the issue's target.
"""

from __future__ import annotations

import statistics
import time

from medxai.data.synthetic import STUDIES, generate

TARGET = 500.0


def _rate(study: str, n: int, size: int, repeats: int) -> tuple[float, list[float]]:
    generate(study, 4, size=size, seed=10_000)  # warm the per-size caches (grids, noise and vessel banks)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(study, n, size=size, seed=r, balanced=True, shortcut=0.8)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), times


def run(quick: bool = False) -> dict:
    n, repeats = (24, 2) if quick else (300, 5)
    sizes = (128,) if quick else (128, 64, 256)
    rows = []
    for size in sizes:
        for study in STUDIES:
            m = n if size <= 128 else max(8, n // 4)
            rate, times = _rate(study, m, size, repeats)
            target = TARGET if size == 128 else None
            rows.append({"work": f"generate {study} {size}px", "peer": None, "medxai_s": statistics.median(times) / m,
                         "images_per_s": rate, "target": target,
                         "met": (rate >= TARGET) if target is not None else None,
                         "note": f"{m} images x {repeats} runs, median, balanced classes, shortcut 0.8, one thread",
                         "times_s": times})
    return {"kind": "synthetic", "rows": rows,
            "notes": "medxai_s is seconds per image; the target applies at 128 px (issue 2)."}
