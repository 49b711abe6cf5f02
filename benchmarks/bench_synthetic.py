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


def _generation(quick: bool = False) -> dict:
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


# --------------------------------------------------------------------------- loader throughput

def _passes(tmp, files, masks):
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    from medxai.data import open_dataset

    def stack(batch):
        return torch.stack([it["image"] for it in batch])

    def medxai_pass():
        ds = open_dataset(tmp, "train")
        items = [ds[i] for i in range(len(ds))]
        return {str(Path(it["path"]).resolve()): it["image"] for it in items}

    def loader_pass():
        ds = open_dataset(tmp, "train")
        return sum(int(x.shape[0]) for x in torch.utils.data.DataLoader(ds, batch_size=32, collate_fn=stack))

    def floor_pass():
        out = {}
        for p in files:
            a = torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)
            out[str(p.resolve())] = a[None] if a.ndim == 2 else a.permute(2, 0, 1)
        _ = [np.asarray(Image.open(p)) > 0 for p in masks]
        return out

    return medxai_pass, loader_pass, floor_pass


def _loader_rows(quick: bool) -> list[dict]:
    """Write a study with ``write_synthetic`` (what ``medxai data synth`` calls), read it back with
    ``open_dataset``: items per second, one pass over the split, and through a DataLoader. Reference:
    a bare PIL + numpy loop over the same image and mask files (the floor: no layout detection,
    validation, label parsing or dict items)."""
    import tempfile
    from pathlib import Path

    from benchmarks._harness import row, timeit_pair
    from medxai.data import write_synthetic

    n, size, repeats = (16, 32, 1) if quick else (256, 128, 3)
    rows = []
    for study in ("cxr-pneumonia", "fundus-dr"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_synthetic(study, tmp, {"train": n}, size=size, seed=0)
            t_write = time.perf_counter() - t0
            files = sorted(p for p in Path(tmp).rglob("*.png") if "masks" not in p.parts)
            masks = sorted(p for p in Path(tmp).rglob("*.png") if "masks" in p.parts)

            medxai_pass, loader_pass, floor_pass = _passes(tmp, files, masks)
            t = timeit_pair({"medxai": medxai_pass, "loader": loader_pass, "floor": floor_pass},
                            repeats=repeats, warmup=1)
            k = len(t["medxai"]["result"])
            assert t["loader"]["result"] == k
            ours, floor = t["medxai"]["result"], t["floor"]["result"]
            assert set(ours) == set(floor)
            agree = max(float((ours[k] - floor[k]).abs().max()) for k in ours)
            rows.append(row(f"open_dataset over a written {study} split ({k} images {size}px + masks), one pass",
                            "PIL + numpy loop over the same files (floor)", t["medxai"]["median_s"],
                            t["floor"]["median_s"], images=k, agreement=agree, tol=1e-6,
                            agreement_kind="max abs pixel diff", write_images_per_s=n / t_write,
                            loader_s=t["loader"]["median_s"],
                            loader_images_per_s=k / t["loader"]["median_s"],
                            note="includes layout detection and the table; loader: DataLoader batch 32, "
                                 "0 workers; write: write_synthetic (generation + PNG encoding)"))
    return rows


def run(quick: bool = False) -> dict:
    res = _generation(quick)
    res["rows"] += _loader_rows(quick)
    res["notes"] += (" Loader rows: wall time of one pass over a split written by write_synthetic; ratio = floor "
                     "time / medxai time (< 1: the price of layout detection, validation and dict items).")
    return res
