"""Torch datasets over the layouts (images decoded lazily), MedMNIST arrays, and synthetic studies.

Every item is a dict: ``image`` float32 (C, H, W) in [0, 1]; ``label`` (int64 scalar tensor, or
float32 (K,) with NaN = ignore for multilabel); ``id``; ``path``; and when the dataset has masks,
``mask`` bool (1, H, W) or (K, H, W) with ``has_mask`` (False: no annotation for this image, the
mask is all False); ``shortcut_mask`` / ``<name>_mask`` bool (1, H, W) for extra mask folders;
``groups`` {name: value} (str) when the dataset has metadata groups (spec ``groups``, synthetic ``sites``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medxai.data.io import is_dicom, load_image, load_mask
from medxai.data.labels import apply_uncertainty
from medxai.data.layouts import DatasetSpec, Record, Table, build_table, canonical_split, load_spec, read_csv
from medxai.data.transforms import resize_centre_crop
from medxai.errors import ConfigError, DataError

Transform = Callable[[dict[str, Any]], dict[str, Any]]

__all__ = ["ArrayDataset", "ImageDataset", "SyntheticDataset", "open_dataset", "stack_masks"]


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False for names the file system cannot hold (too long, NUL)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _label_tensor(label: Any, task: str) -> torch.Tensor:
    if task == "multilabel":
        return torch.as_tensor(np.asarray(label, dtype=np.float32))
    return torch.tensor(int(label), dtype=torch.int64)


def _finish(item: dict[str, Any], size: int | None, transform: Transform | None) -> dict[str, Any]:
    if size is not None:
        item["image"] = resize_centre_crop(item["image"], size)
        for k in [k for k, v in item.items() if k.endswith("mask") and isinstance(v, torch.Tensor) and v.ndim >= 2]:
            item[k] = resize_centre_crop(item[k], size)
    if transform is not None:
        item = transform(item)
    return item


def stack_masks(vals: list[Any], size: tuple[int, int], key: str = "mask", where: Any = None) -> torch.Tensor:
    """Masks of several items -> bool (N, K, H, W): a missing mask (None) is all False, a (H, W) or
    (1, H, W) mask is broadcast to the largest K; a size other than ``size`` is a DataError on ``where``."""
    ts = []
    for v in vals:
        t = torch.zeros(size, dtype=torch.bool) if v is None else torch.as_tensor(v).bool()
        t = t[None] if t.ndim == 2 else t
        if tuple(t.shape[-2:]) != tuple(size):
            raise DataError(where, f"{key} of size {tuple(t.shape[-2:])} does not match the images {tuple(size)}")
        ts.append(t)
    k = max(t.shape[0] for t in ts)
    return torch.stack([t.expand(k, *size) if t.shape[0] == 1 else t for t in ts])


def _stack_labels(labels: list[Any], task: str, k: int) -> np.ndarray:
    if task == "multilabel":
        return np.asarray(labels, dtype=np.float32).reshape(len(labels), k)
    return np.asarray(labels, dtype=np.int64).reshape(len(labels))


# ----------------------------------------------------------------------------------- boxes


def _read_boxes(path: Path, class_names: list[str], multilabel: bool) -> dict[str, list[tuple]]:
    """A boxes CSV (image, x0, y0, x1, y1[, label]) -> {image key: [(x0, y0, x1, y1, class index | None)]}."""
    df = read_csv(path)
    for c in ("image", "x0", "y0", "x1", "y1"):
        if c not in df.columns:
            raise DataError(path, f"missing column '{c}' (boxes need image, x0, y0, x1, y1[, label]); "
                                  f"columns are {list(df.columns)}")
    has_label = "label" in df.columns
    out: dict[str, list[tuple]] = defaultdict(list)
    for i in range(len(df)):
        row = f"row {i + 2}"
        try:
            x0, y0, x1, y1 = (float(df[c].iat[i]) for c in ("x0", "y0", "x1", "y1"))
        except ValueError:
            raise DataError(path, f"{row}: box coordinates must be numbers") from None
        if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
            raise DataError(path, f"{row}: invalid box ({x0}, {y0}, {x1}, {y1}): need x0 < x1 and y0 < y1")
        cls = None
        if has_label and str(df["label"].iat[i]).strip() != "":
            lab = str(df["label"].iat[i]).strip()
            if lab not in class_names:
                raise DataError(path, f"{row}: column 'label': '{lab}' is not in the class list {class_names}")
            cls = class_names.index(lab) if multilabel else None
        key = str(df["image"].iat[i]).strip().replace("\\", "/")
        out[key].append((x0, y0, x1, y1, cls))
    return dict(out)


def boxes_to_mask(boxes: list[tuple], h: int, w: int, k: int) -> np.ndarray:
    """Filled rectangles -> bool (k, h, w). A box covers the pixels whose centres lie in
    [x0, x1) x [y0, y1) (pixel units of the original image); class None fills every channel."""
    m = np.zeros((k, h, w), bool)
    for x0, y0, x1, y1, cls in boxes:
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(w, math.ceil(x1 - 0.5))
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(h, math.ceil(y1 - 0.5))
        if c1 > c0 and r1 > r0:
            if cls is None:
                m[:, r0:r1, c0:c1] = True
            else:
                m[cls, r0:r1, c0:c1] = True
    return m


# ------------------------------------------------------------------------------ image dataset


def validate_records(ds: Any, on_item: Callable[[Any, dict[str, Any]], None] | None = None) -> list[tuple[str, str]]:
    """Decode every item of a record-backed dataset (``records``, ``load(i)``, ``on_error``,
    ``skipped``) once; returns the failures (path, reason). In skip mode the bad records are dropped and
    added to ``skipped``; in raise mode the first raises."""
    bad: list[tuple[int, str, str]] = []
    for i, rec in enumerate(ds.records):
        try:
            item = ds.load(i)
        except DataError as exc:
            if ds.on_error == "raise":
                raise
            bad.append((i, str(rec.path), exc.reason))
            continue
        if on_item is not None:
            on_item(rec, item)
    drop = {i for i, _, _ in bad}
    ds.records = [r for i, r in enumerate(ds.records) if i not in drop]
    found = [(p, r) for _, p, r in bad]
    ds.skipped.extend(found)
    return found


class RecordViews:
    """Per-record columns of a dataset backed by ``records`` (each with ``id``, ``path``, ``split``,
    ``groups``) and a ``spec`` (its ``groups`` names), read without decoding anything."""

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def paths(self) -> list[str]:
        return [str(r.path) for r in self.records]

    @property
    def splits(self) -> list[str | None]:
        return [r.split for r in self.records]

    @property
    def groups(self) -> dict[str, list[str]]:
        """Metadata group values, one per record (spec ``groups``; without decoding): {name: [value] * N}."""
        return {name: [r.groups[name] for r in self.records] for name in self.spec.groups}


class ImageDataset(RecordViews, Dataset):
    """Records of a layout, images decoded at ``__getitem__``.

    Attributes: ``class_names``, ``task``, ``labels`` (numpy, without decoding), ``ids``,
    ``splits``, ``skipped`` (list of (path, reason)), ``raw_labels`` (CheXpert values),
    ``has_masks``, ``layout``, ``root``, ``split_source`` (where the split's records come from, e.g.
    "valid.csv"; None when the layout says so itself). An item that fails to decode raises a
    DataError naming the file, whatever ``on_error``: it is never replaced by another image.
    :meth:`validate` decodes everything up front and, in skip mode, drops the bad records (what
    ``open_dataset(..., on_error="skip")`` does by default), so ``len`` counts readable records only.
    """

    def __init__(self, table: Table, spec: DatasetSpec, *, size: int | None = None,
                 transform: Transform | None = None, on_error: str = "raise") -> None:
        self.table = table
        self.spec = spec
        self.records: list[Record] = list(table.records)
        self.class_names = list(table.class_names)
        self.task = table.task
        self.layout = table.layout
        self.root = table.root
        self.size = size
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = list(table.skipped)
        self.split_source = table.split_source
        self.notes = list(table.notes)
        self._raw = table.raw_labels
        root = table.root
        self.mask_dir = root / spec.mask_dir if spec.mask_dir else None
        if self.mask_dir is not None and not _is_dir(self.mask_dir):
            raise DataError(self.mask_dir, "mask folder not found")
        self.extra_mask_dirs = {n: root / d for n, d in spec.extra_mask_dirs.items()}
        for d in self.extra_mask_dirs.values():
            if not _is_dir(d):
                raise DataError(d, "mask folder not found")
        self.boxes = (_read_boxes(root / spec.boxes, self.class_names, self.task == "multilabel")
                      if spec.boxes else None)
        self.has_masks = self.mask_dir is not None or self.boxes is not None
        self.mask_channels = len(self.class_names) if self.task == "multilabel" else 1

    # -- cheap views
    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return _stack_labels([r.label for r in self.records], self.task, len(self.class_names))


    @property
    def raw_labels(self) -> np.ndarray | None:
        if self._raw is None:
            return None
        keep = {id(r) for r in self.records}
        return self._raw[[i for i, r in enumerate(self.table.records) if id(r) in keep]]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layout={self.layout!r}, n={len(self)}, task={self.task!r}, "
                f"classes={self.class_names}, skipped={len(self.skipped)})")

    # -- decoding
    def _mask_for(self, rec: Record, h: int, w: int) -> tuple[np.ndarray, bool]:
        k = self.mask_channels
        mask = np.zeros((k, h, w), bool)
        has = False
        if self.mask_dir is not None:
            rel = PurePosixPath(rec.rel)
            single = self.mask_dir / rel.with_suffix(".png")
            per_class = self.mask_dir / rel.with_suffix("")
            if per_class.is_dir():
                has = True
                for j, name in enumerate(self.class_names):
                    f = per_class / f"{name}.png"
                    if f.is_file():
                        m = self._read_mask(f, h, w)
                        if k == 1:
                            mask[0] |= m
                        else:
                            mask[j] = m
            elif single.is_file():
                if k != 1:
                    raise DataError(single, f"a multilabel dataset needs one mask per class in {per_class}/<class>.png")
                mask[0] = self._read_mask(single, h, w)
                has = True
        if self.boxes is not None:
            boxes = None
            for key in (rec.rel, rec.id, PurePosixPath(rec.rel).name, PurePosixPath(rec.id).name):
                if key in self.boxes:
                    boxes = self.boxes[key]
                    break
            if boxes is not None:
                mask |= boxes_to_mask(boxes, h, w, k)
                has = True
        return mask, has

    def _read_mask(self, path: Path, h: int, w: int) -> np.ndarray:
        m = load_mask(path, max_pixels=self.spec.max_pixels)
        if m.shape != (h, w):
            raise DataError(path, f"mask size {m.shape[1]}x{m.shape[0]} differs from the image's {w}x{h}")
        return m

    def load(self, index: int) -> dict[str, Any]:
        """Decode item ``index`` (raises DataError on a bad file, whatever ``on_error``)."""
        rec = self.records[index]
        dicom = self.spec.window is not None or self.spec.frame is not None
        dicom = dicom and is_dicom(rec.path)  # window / frame apply to DICOM files only
        img = load_image(rec.path, channels=self.spec.channels, max_pixels=self.spec.max_pixels, bits=self.spec.bits,
                         window=self.spec.window if dicom else None, frame=self.spec.frame if dicom else None)
        h, w = img.shape[:2]
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "label": _label_tensor(rec.label, self.task),
            "id": rec.id,
            "path": str(rec.path),
        }
        if self.spec.groups:
            item["groups"] = dict(rec.groups)
        if self.has_masks:
            mask, has = self._mask_for(rec, h, w)
            item["mask"] = torch.from_numpy(mask)
            item["has_mask"] = torch.tensor(has)
        for name, d in self.extra_mask_dirs.items():
            f = d / PurePosixPath(rec.rel).with_suffix(".png")
            m = self._read_mask(f, h, w) if f.is_file() else np.zeros((h, w), bool)
            item[f"{name}_mask"] = torch.from_numpy(m[None])
        return _finish(item, self.size, self.transform)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        return self.load(index % n)  # a bad file raises (naming it); substituting another image would mislabel

    def validate(self, on_item: Callable[[Record, dict[str, Any]], None] | None = None) -> list[tuple[str, str]]:
        """Decode every item once; returns the failures. In skip mode the bad records are dropped
        (``len`` and ``labels`` shrink) and added to ``skipped``; in raise mode the first raises.
        ``on_item(record, item)`` sees each decoded item (``dataset_info`` reads image statistics)."""
        return validate_records(self, on_item)


# ------------------------------------------------------------------------------ MedMNIST arrays

#: Label names and tasks of the MedMNIST v2 2-D datasets whose ``INFO`` we mirror.
MEDMNIST_INFO: dict[str, tuple[str, list[str]]] = {
    "pneumoniamnist": ("binary", ["normal", "pneumonia"]),
    "retinamnist": ("ordinal", ["0", "1", "2", "3", "4"]),
    "chestmnist": ("multilabel", ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
                                  "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
                                  "pleural", "hernia"]),
}


class ArrayDataset(Dataset):
    """A MedMNIST-style ``.npz`` (``{split}_images`` uint8 (N, H, W[, C]), ``{split}_labels`` (N, 1) or (N, K))."""

    def __init__(self, path: Path, split: str | None, spec: DatasetSpec, *, size: int | None = None,
                 transform: Transform | None = None) -> None:
        self.path = path
        self.size, self.transform, self.spec = size, transform, spec
        self.skipped: list[tuple[str, str]] = []
        self.layout, self.root = "medmnist", path.parent
        self.has_masks = False
        if spec.groups:
            raise ConfigError(f"groups: the medmnist layout ({path}) has no metadata columns to group by")
        try:
            npz = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(path, f"cannot read .npz: {' '.join(str(exc).split())}") from None
        with npz:
            splits = [s for s in ("train", "val", "test") if f"{s}_images" in npz.files]
            if not splits:
                raise DataError(path, f"no '<split>_images' arrays (found {npz.files})")
            if split is not None:
                if split not in splits:
                    raise DataError(path, f"no '{split}_images' array (found {npz.files})")
                splits = [split]
            imgs, labs, self._splits = [], [], []
            for s in splits:
                if f"{s}_labels" not in npz.files:
                    raise DataError(path, f"missing array '{s}_labels'")
                try:
                    im, lb = npz[f"{s}_images"], npz[f"{s}_labels"]
                except Exception as exc:
                    raise DataError(path, f"cannot read arrays of split '{s}': {exc}") from None
                if im.dtype != np.uint8 or im.ndim not in (3, 4) or len(im) != len(lb):
                    raise DataError(path, f"'{s}_images' must be uint8 (N, H, W[, C]) with one label row each; "
                                          f"got {im.dtype} {im.shape} and labels {lb.shape}")
                imgs.append(im if im.ndim == 4 else im[..., None])
                labs.append(lb.reshape(len(lb), -1))
                self._splits += [s] * len(im)
        self.images = np.concatenate(imgs) if len(imgs) > 1 else imgs[0]
        raw = np.concatenate(labs) if len(labs) > 1 else labs[0]
        name = path.stem.split("_")[0].lower()
        task, names = MEDMNIST_INFO.get(name, (None, None))
        if spec.task is not None:
            task = spec.task
        if task is None:
            task = "multilabel" if raw.shape[1] > 1 else ("binary" if int(raw.max()) <= 1 else "multiclass")
        if spec.classes:
            names = list(spec.classes)
        if names is None:
            names = [str(i) for i in range(raw.shape[1] if task == "multilabel" else int(raw.max()) + 1)]
        self.class_names, self.task = names, task
        if task == "multilabel":
            if raw.shape[1] != len(names):
                raise DataError(path, f"labels have {raw.shape[1]} columns but there are {len(names)} classes")
            self._labels = raw.astype(np.float32)
        else:
            lab = raw[:, 0].astype(np.int64)
            if lab.min() < 0 or lab.max() >= len(names):
                raise DataError(path, f"label {int(lab.max())} outside the class list {names}")
            self._labels = lab
        if spec.channels is not None and spec.channels != self.images.shape[-1] and spec.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {spec.channels}")
        self._idx = {s: 0 for s in ("train", "val", "test")}
        self._ids = []
        for s in self._splits:
            self._ids.append(f"{name}-{s}-{self._idx[s]:06d}")
            self._idx[s] += 1

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def splits(self) -> list[str]:
        return list(self._splits)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(2, 0, 1))).to(torch.float32) / 255.0
        if self.spec.channels == 3 and img.shape[0] == 1:
            img = img.expand(3, -1, -1).contiguous()
        elif self.spec.channels == 1 and img.shape[0] == 3:
            from medxai.data.transforms import to_gray

            img = to_gray(img)
        item = {"image": img, "label": _label_tensor(self._labels[index], self.task), "id": self._ids[index],
                "path": str(self.path)}
        return _finish(item, self.size, self.transform)


# ---------------------------------------------------------------------------- synthetic dataset


class SyntheticDataset(Dataset):
    """A synthetic study rendered lazily, one ``generate_one`` call per item (no disk).

    Items are those of :func:`open_dataset` on the written study: ``image`` = uint8 / 255,
    ``mask`` (1, H, W) or (K, H, W) with ``has_mask`` True, ``shortcut_mask`` (1, H, W) when a
    shortcut is requested, ``<name>_mask`` for extra masks (``evidence_mask`` for skin-lesion);
    multilabel labels go through the CheXpert ``uncertainty`` policy with ``id`` as the row key.
    With ``sites=True`` items carry ``groups`` {"site", "sex", "age"} and :attr:`groups` lists them
    from the seeds alone (no rendering).
    """

    def __init__(self, study: str, n: int, size: int = 64, seed: int = 0, split: str = "train",
                 shortcut: float | None = None, *, transform: Transform | None = None, resize: int | None = None,
                 uncertainty: str = "ignore", uncertainty_seed: int = 0, **options: Any) -> None:
        from medxai.data.synthetic import generate_one

        split = canonical_split(split) or "train"
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"n must be a non-negative integer, got {n!r}")
        self.study, self.n, self.img_size, self.seed, self.split = study, int(n), int(size), int(seed), split
        self.shortcut, self.options = shortcut, dict(options)
        self.transform, self.size = transform, resize
        self.uncertainty, self.uncertainty_seed = uncertainty, uncertainty_seed
        self.skipped: list[tuple[str, str]] = []
        self.layout, self.root = "synthetic", None
        self.has_masks = True
        self._gen = generate_one
        from medxai.data.synthetic._api import _check_args, _resolve

        spec = _check_args(study, size, seed, split, shortcut)  # validates like generate() does
        _resolve(spec, self.options)
        self.class_names, self.task = list(spec.class_names), spec.task
        self.extra_mask_names = list(spec.extra_masks)
        self._labels: np.ndarray | None = None
        if self.task == "multilabel":
            apply_uncertainty(np.zeros((0, len(self.class_names))), uncertainty, names=self.class_names, keys=[])

    def __len__(self) -> int:
        return self.n

    def _ids(self) -> list[str]:
        return [f"{self.study}-{self.split}-{i:06d}" for i in range(self.n)]

    @property
    def ids(self) -> list[str]:
        return self._ids()

    @property
    def raw_labels(self) -> np.ndarray:
        """Labels as drawn (CheXpert vocabulary for multilabel), without rendering the images."""
        from medxai._util.seed import derive_seed
        from medxai.data.synthetic._api import LABEL, STUDY_REGISTRY, Context, _resolve

        # Mirrors the label draw of synthetic._api._one (a test checks it equals generate()'s labels).
        spec = STUDY_REGISTRY.get(self.study)
        opts = _resolve(spec, self.options)
        out = []
        for i in range(self.n):
            base = derive_seed(spec.name, self.seed, self.split, i)
            ctx = Context(size=self.img_size, label=None, options=opts, base_seed=base, lesions=opts["lesions"])
            out.append(spec.draw_label(ctx.stream(LABEL), opts))
        return _stack_labels(out, self.task, len(self.class_names))

    @property
    def groups(self) -> dict[str, list[str]]:
        """Metadata group values, one per image, from the seeds (no rendering); {} without ``sites=True``."""
        from medxai._util.seed import derive_seed
        from medxai.data.synthetic._api import STUDY_REGISTRY, _resolve, site_groups, site_metadata

        spec = STUDY_REGISTRY.get(self.study)
        opts = _resolve(spec, self.options)
        if not opts.get("sites"):
            return {}
        rows = [site_groups(site_metadata(derive_seed(spec.name, self.seed, self.split, i), opts))
                for i in range(self.n)]
        return {k: [r[k] for r in rows] for k in ("site", "sex", "age")}

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            raw = self.raw_labels
            if self.task == "multilabel":
                raw = apply_uncertainty(raw, self.uncertainty, names=self.class_names, keys=self._ids(),
                                        seed=self.uncertainty_seed)
            self._labels = raw
        return self._labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        index %= self.n
        one = self._gen(self.study, index, size=self.img_size, seed=self.seed, split=self.split,
                        shortcut=self.shortcut, **self.options)
        img = torch.from_numpy(np.ascontiguousarray(one["image"].transpose(2, 0, 1))).to(torch.float32) / 255.0
        label = one["label"]
        if self.task == "multilabel":
            label = apply_uncertainty(np.asarray(label, np.float32)[None], self.uncertainty, names=self.class_names,
                                      keys=[one["id"]], seed=self.uncertainty_seed)[0]
        mask = np.asarray(one["mask"], bool)
        item: dict[str, Any] = {"image": img, "label": _label_tensor(label, self.task), "id": one["id"],
                                "path": f"synthetic://{self.study}/{self.split}/{index}",
                                "mask": torch.from_numpy(mask[None] if mask.ndim == 2 else mask),
                                "has_mask": torch.tensor(True)}
        if "groups" in one:
            item["groups"] = dict(one["groups"])
        if self.shortcut is not None:
            item["shortcut_mask"] = torch.from_numpy(np.asarray(one["shortcut_mask"], bool)[None])
        for name in self.extra_mask_names:
            item[f"{name}_mask"] = torch.from_numpy(np.asarray(one["extra_masks"][name], bool)[None])
        return _finish(item, self.size, self.transform)


# ----------------------------------------------------------------------------------- factory


def open_dataset(spec: str | os.PathLike | dict[str, Any] | DatasetSpec, split: str | None = None, *,
                 size: int | None = None, transform: Transform | None = None, on_error: str = "raise",
                 validate: bool | None = None, **overrides: Any) -> Dataset:
    """Open a dataset from a path (layout auto-detected), a dict, or a YAML file.

    ``split``: "train" | "val" | "test" | None (all). ``size``: resize the shorter side and
    centre-crop to ``size`` x ``size`` (masks nearest); for the ``volumes`` layout (NIfTI / DICOM series,
    :class:`medxai.data.volumes.VolumeDataset`) resample to a ``size`` cube (trilinear, masks nearest).
    ``transform``: an item transform applied last. ``on_error``: "raise" (first bad record raises
    DataError) or "skip" (bad records are skipped and listed in ``.skipped`` as (path, reason)).
    ``validate=True`` decodes every image up front; the default (None) does so with
    ``on_error="skip"``, so undecodable images are dropped and listed too and ``len`` counts readable
    records only (``validate=False``: headers only, and an undecodable image raises DataError when
    read, never replaced by another). ``overrides``: any
    :class:`~medxai.data.layouts.DatasetSpec` key (e.g. ``uncertainty``, ``findings``, ``mask_dir``,
    ``allow_outside_root``, ``max_pixels``, ``bits``, ``window``, ``frame``, ``splits``, ``test_from``).
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    parsed, root, _ = load_spec(spec, overrides)
    split = canonical_split(split)
    if parsed.layout == "medmnist":
        if not parsed.npz:
            raise ConfigError("medmnist layout needs 'npz' (the .npz file, relative to the root)")
        ds: Any = ArrayDataset(root / parsed.npz, split, parsed, size=size, transform=transform)
    elif parsed.layout == "volumes":  # NIfTI files / DICOM series (medxai.data.volumes); size: a cube side
        from medxai.data.volumes import open_volumes

        ds = open_volumes(parsed, root, split, size=size, transform=transform, on_error=on_error)
        if validate or (validate is None and on_error == "skip"):
            ds.validate()
    else:
        table = build_table(parsed, root, split, on_error)
        ds = ImageDataset(table, parsed, size=size, transform=transform, on_error=on_error)
        if validate or (validate is None and on_error == "skip"):
            ds.validate()
    if ds.skipped:
        import logging

        logging.getLogger("medxai.data").warning("%s: skipped %d record(s); first: %s: %s", root, len(ds.skipped),
                                                 *ds.skipped[0])
    return ds

