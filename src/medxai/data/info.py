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


#: Flags listed one by one before the rest are summed up in one entry.
FLAG_LIMIT = 5
#: A 16-bit image whose maximum is under this share of the range probably holds fewer bits.
LOW_RANGE = 1 / 8
#: A DICOM whose standard deviation (in [0, 1]) is under this has almost no contrast.
LOW_CONTRAST = 0.02


def _stored_16bit(path: Path) -> bool:
    """True for a non-DICOM file Pillow reads as 16-bit integers (mode I;16* or I)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.mode.startswith("I")
    except Exception:
        return False


def _flags(found: list[tuple[str, str]], what: str) -> list[dict[str, str]]:
    """The first FLAG_LIMIT (path, reason) as they are, the rest as one entry that counts them."""
    out = [{"path": p, "reason": r} for p, r in found[:FLAG_LIMIT]]
    if len(found) > FLAG_LIMIT:
        out.append({"path": found[FLAG_LIMIT][0], "reason": f"and {len(found) - FLAG_LIMIT} more image(s) {what}"})
    return out


def _minority(values: dict[str, Any], what: str, advice: str) -> list[dict[str, str]]:
    """One entry per value other than the most common one, naming a few files and the counts."""
    counts = Counter(values.values())
    if len(counts) < 2:
        return []
    major, n_major = counts.most_common(1)[0]
    out = []
    for value, n in counts.most_common()[1:]:
        files = [p for p, v in values.items() if v == value]
        out.append({"path": files[0], "reason": f"{n} image(s) with {what} {value} where {n_major} of {len(values)} "
                                                f"have {major} (e.g. {', '.join(Path(f).name for f in files[:3])}); "
                                                f"{advice}"})
    return out


def _decode_checks(ds: ImageDataset) -> list[dict[str, str]]:
    """Decode every image (dropping the undecodable ones, as ``validate`` does) and flag what decodes
    but is probably wrong: low range (bits), no contrast (DICOM window), mixed channels or sizes."""
    low: list[tuple[str, str]] = []
    flat: list[tuple[str, str]] = []
    channels: dict[str, int] = {}
    sizes: dict[str, str] = {}

    def look(rec: Any, item: dict[str, Any]) -> None:
        img, path = item["image"], str(rec.path)
        channels[path] = int(img.shape[0])
        sizes[path] = f"{int(img.shape[-1])}x{int(img.shape[-2])}"
        top, std = float(img.max()), float(img.std())
        if is_dicom(rec.path):
            if std < LOW_CONTRAST:
                flat.append((path, f"std {std:.3f}: almost no contrast after the DICOM transform (no VOI window in "
                                   "the file?); set window: (minmax, [center, width] or a preset such as lung)"))
        elif ds.spec.bits is None and 0 < top < LOW_RANGE and _stored_16bit(rec.path):
            b = max(9, int(np.ceil(np.log2(round(top * 65535) + 1))))
            low.append((path, f"max {top:.2f} of the range: {b}-bit data in a 16-bit file? set bits: {b}"))

    bad = [{"path": p, "reason": r} for p, r in ds.validate(on_item=look)]
    return (bad + _flags(low, "using under 1/8 of the 16-bit range") + _flags(flat, "with almost no contrast")
            + _minority(channels, "channel count", "set channels: 1 or 3")
            + _minority(sizes, "size", "set size: (resize to one size)"))


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
    share of images with a non-empty mask), ``problems`` [{path, reason}], ``decoded`` (False: only the
    index and headers were read, decoding problems are not checked). ``decode=True`` also decodes every
    image and flags undecodable files, 16-bit files using under 1/8 of their range (``bits:``), DICOMs
    with almost no contrast (``window:``) and channel counts or sizes other than the majority's;
    ``sample`` limits the header / mask scan to that many evenly spaced items.
    """
    ds = open_dataset(spec, split=None, on_error="skip", validate=False, **overrides)
    problems: list[dict[str, str]] = [{"path": p, "reason": r} for p, r in ds.skipped]
    if decode and isinstance(ds, ImageDataset):
        problems += _decode_checks(ds)
    splits = [s if s is not None else "all" for s in ds.splits]
    labels = ds.labels
    info: dict[str, Any] = {"layout": ds.layout, "root": str(ds.root), "task": ds.task,
                            "class_names": list(ds.class_names), "n": len(ds), "splits": {}, "image_sizes": {},
                            "masks": {}, "problems": problems, "decoded": bool(decode) or isinstance(ds, ArrayDataset),
                            "split_source": getattr(ds, "split_source", None), "notes": list(getattr(ds, "notes", []))}
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
