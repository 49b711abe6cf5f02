"""Synthetic study generation speed: images per CPU second on one thread (numpy), target 500 at 128 px.

No peer exists (the studies are medxai's own); rows report throughput against the issue's target.
"""

from __future__ import annotations

import statistics
import time

from medxai.data.synthetic import STUDIES, generate

TARGET = 500.0


def _rate(study: str, n: int, size: int, repeats: int) -> tuple[float, float, list[float]]:
    """(images per CPU second, images per wall second, CPU times) over ``repeats`` runs, medians."""
    generate(study, 4, size=size, seed=10_000)  # warm the per-size caches (grids, noise and vessel banks)
    cpu, wall = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(study, n, size=size, seed=r, balanced=True, shortcut=0.8)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return n / statistics.median(cpu), n / statistics.median(wall), cpu


def run(quick: bool = False) -> dict:
    n, repeats = (24, 2) if quick else (300, 5)
    sizes = (128,) if quick else (128, 64, 256)
    rows = []
    for size in sizes:
        for study in STUDIES:
            m = n if size <= 128 else max(8, n // 4)
            rate, wall_rate, times = _rate(study, m, size, repeats)
            target = TARGET if size == 128 else None
            rows.append({"work": f"generate {study} {size}px", "peer": None, "medxai_s": statistics.median(times) / m,
                         "images_per_s": rate, "wall_images_per_s": wall_rate, "target": target,
                         "met": (rate >= TARGET) if target is not None else None,
                         "note": f"{m} images x {repeats} runs, median, balanced classes, shortcut 0.8, one thread",
                         "times_s": times})
    return {"kind": "synthetic", "rows": rows,
            "notes": "images_per_s and medxai_s (seconds per image) count this process's CPU time on its one "
                     "thread, so other work on the machine does not count against it; wall_images_per_s is "
                     "elapsed time. The target applies at 128 px (issue 2)."}
