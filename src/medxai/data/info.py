"""``dataset_info``: what a dataset holds (counts per class and split, image sizes, mask coverage)
and what is wrong with it (skipped records, unreadable headers, masks that do not fit)."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medxai.data.datasets import ArrayDataset, ImageDataset, open_dataset
from medxai.data.io import is_dicom
from medxai.errors import DataError

__all__ = ["dataset_info", "image_size"]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    path = Path(path)
    if is_dicom(path):
        import pydicom

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as exc:
            raise DataError(path, f"unreadable DICOM header: {' '.join(str(exc).split())}") from None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size
    except Exception as exc:
        raise DataError(path, f"unreadable image header: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def _sample(n: int, sample: int | None) -> list[int]:
    if sample is None or sample >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, sample)})


def dataset_info(spec: Any, *, decode: bool = False, sample: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Summarise a dataset (path, dict or YAML spec, as for ``open_dataset``), reading headers only.

    Returns a JSON-able dict: ``layout``, ``root``, ``task``, ``class_names``, ``n``, ``splits``
    (per split: ``n`` and ``classes``: count per class, or for multilabel per finding the counts
    of positive / negative / uncertain / blank), ``image_sizes`` ("WxH": count), ``masks``
    (per split: share of images annotated, mean mask area share, and per extra mask folder the
    share of images with a non-empty mask), ``problems`` [{path, reason}]. ``decode=True`` also
    decodes every image; ``sample`` limits the header / mask scan to that many evenly spaced items.
    """
    ds = open_dataset(spec, split=None, on_error="skip", **overrides)
    problems: list[dict[str, str]] = [{"path": p, "reason": r} for p, r in ds.skipped]
    if decode and isinstance(ds, ImageDataset):
        problems += [{"path": p, "reason": r} for p, r in ds.validate()]
    splits = [s if s is not None else "all" for s in ds.splits]
    labels = ds.labels
    info: dict[str, Any] = {"layout": ds.layout, "root": str(ds.root), "task": ds.task,
                            "class_names": list(ds.class_names), "n": len(ds), "splits": {}, "image_sizes": {},
                            "masks": {}, "problems": problems}
    order = [s for s in ("train", "val", "test", "all") if s in set(splits)]
    raw = getattr(ds, "raw_labels", None)
    for s in order:
        idx = [i for i, x in enumerate(splits) if x == s]
        entry: dict[str, Any] = {"n": len(idx)}
        if ds.task == "multilabel":
            src = raw if raw is not None else labels
            sub = src[idx] if len(idx) else np.zeros((0, len(ds.class_names)), np.float32)
            entry["classes"] = {name: {"positive": int((sub[:, j] == 1).sum()),
                                       "negative": int((sub[:, j] == 0).sum()),
                                       "uncertain": int((sub[:, j] == -1).sum()),
                                       "blank": int(np.isnan(sub[:, j]).sum())}
                                for j, name in enumerate(ds.class_names)}
        else:
            cnt = Counter(int(v) for v in labels[idx])
            entry["classes"] = {name: cnt.get(j, 0) for j, name in enumerate(ds.class_names)}
        info["splits"][s] = entry
    if isinstance(ds, ArrayDataset):
        n, h, w, c = ds.images.shape
        info["image_sizes"] = {f"{w}x{h}": int(n)}
        info["channels"] = int(c)
        return info
    sizes: Counter[str] = Counter()
    mask_acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in _sample(len(ds), sample):
        rec = ds.records[i]
        try:
            w, h = image_size(rec.path)
        except DataError as exc:
            problems.append({"path": str(rec.path), "reason": exc.reason})
            continue
        sizes[f"{w}x{h}"] += 1
        s = rec.split or "all"
        if ds.has_masks:
            try:
                mask, has = ds._mask_for(rec, h, w)
            except DataError as exc:
                problems.append({"path": exc.path or str(rec.path), "reason": exc.reason})
                continue
            mask_acc[s]["annotated"].append(float(has))
            if has:
                mask_acc[s]["area"].append(float(mask.any(axis=0).mean()))
                mask_acc[s]["nonempty"].append(float(mask.any()))
        for name, d in ds.extra_mask_dirs.items():
            f = d / PurePosixPath(rec.rel).with_suffix(".png")
            if f.is_file():
                try:
                    m = ds._read_mask(f, h, w)
                except DataError as exc:
                    problems.append({"path": exc.path or str(f), "reason": exc.reason})
                    continue
                mask_acc[s][f"{name}_nonempty"].append(float(m.any()))
            else:
                mask_acc[s][f"{name}_nonempty"].append(0.0)
    info["image_sizes"] = dict(sizes.most_common())
    for s in order:
        acc = mask_acc.get(s)
        if not acc:
            continue
        out: dict[str, Any] = {}
        if "annotated" in acc:
            out["annotated_share"] = float(np.mean(acc["annotated"]))
            out["nonempty_share"] = float(np.mean(acc["nonempty"])) if acc["nonempty"] else 0.0
            out["mean_area_share"] = float(np.mean(acc["area"])) if acc["area"] else 0.0
        for k, v in acc.items():
            if k.endswith("_nonempty") and k != "nonempty":
                out[f"{k}_share"] = float(np.mean(v))
        info["masks"][s] = out
    info["problems"] = problems
    info["scanned"] = len(_sample(len(ds), sample))
    return info
