"""Write synthetic studies to disk in the real datasets' layouts (see docs/data-layouts.md).

- single-label studies (cxr-pneumonia, skin-lesion): folder layout ``<split>/<CLASS>/<id>.png``;
- fundus-dr: Kaggle DR's CSV layout, ``trainLabels.csv`` (image, level, split) with images in
  ``<split>/<id>.png``;
- cxr-multilabel: CheXpert's layout, ``train.csv`` / ``valid.csv`` / ``test.csv`` (Path, Sex, Age,
  Frontal/Lateral, AP/PA, findings as 1.0 / 0.0 / -1.0 / blank), images in
  ``{train,valid,test}/patientNNNNN/study1/view1_frontal.png``;
- masks mirror the image paths: ``masks/<rel>.png`` (per finding for multilabel:
  ``masks/<rel without suffix>/<Finding>.png``), ``shortcut_masks/<rel>.png``,
  ``<name>_masks/<rel>.png`` for extra masks; a ``medxai.json`` manifest that ``open_dataset`` reads.

A split is written into a staging folder and moved into place, then the CSV index and the
manifest are written atomically: an interrupted write leaves the previous state or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medxai._util.io import atomic_write_json, atomic_write_text
from medxai._util.seed import derive_seed
from medxai.data.labels import CHEXPERT_FINDINGS
from medxai.data.layouts import MANIFEST
from medxai.errors import DataError

if TYPE_CHECKING:
    from medxai.data.synthetic import SyntheticStudy

FORMAT = "medxai-dataset"
CHEXPERT_SPLIT_FILES = {"train": ("train.csv", "train"), "val": ("valid.csv", "valid"), "test": ("test.csv", "test")}
DR_CSV = "trainLabels.csv"

__all__ = ["layout_for", "write_study", "write_synthetic"]


def layout_for(task: str, study: str = "") -> str:
    """The real layout a synthetic study is written in: chexpert (multilabel), csv (ordinal DR), folder."""
    if task == "multilabel":
        return "chexpert"
    if task == "ordinal" or study == "fundus-dr":
        return "csv"
    return "folder"


def _save_png_plain(path: Path, arr: np.ndarray) -> None:
    """A PNG in the staging folder (made atomic by the folder move)."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG", compress_level=1)


class _StudyWriter:
    """Writes one study's splits into ``out_dir`` (state: the manifest being built)."""

    def __init__(self, out_dir: Path, *, study: str, task: str, class_names: list[str], channels: int | None,
                 seed: int, size: int, shortcut: float | None, options: Mapping[str, Any],
                 extra_masks: Iterable[str], overwrite: bool) -> None:
        self.out = Path(out_dir)
        self.layout = layout_for(task, study)
        self.study, self.task, self.class_names = study, task, list(class_names)
        self.extra = list(extra_masks)
        self.config = {"study": study, "seed": int(seed), "size": int(size),
                       "shortcut": None if shortcut is None else float(shortcut),
                       "options": json.loads(json.dumps(dict(options), default=str))}
        self.overwrite = overwrite
        self.channels = channels
        self.mask_dirs = {"lesion": "masks"}
        if shortcut is not None:
            self.mask_dirs["shortcut"] = "shortcut_masks"
        for name in self.extra:
            self.mask_dirs[name] = f"{name}_masks"
        self.manifest = self._existing()

    def _existing(self) -> dict[str, Any] | None:
        mpath = self.out / MANIFEST
        if not self.out.exists():
            return None
        if not self.out.is_dir():
            raise DataError(self.out, "output path exists and is not a folder")
        if not mpath.is_file():
            if any(p for p in self.out.iterdir() if not p.name.startswith(".")):
                raise DataError(self.out, "output folder is not empty and holds no medxai dataset; choose another")
            return None
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(mpath, f"unreadable manifest: {exc}") from None
        same = all(old.get(k) == v for k, v in self.config.items())
        if not same:
            if not self.overwrite:
                raise DataError(self.out, f"holds another study configuration ({old.get('study')}, seed "
                                          f"{old.get('seed')}, size {old.get('size')}); use overwrite or another "
                                          "folder")
            for split in list(old.get("splits", {})):
                self._remove_split(split, old)
            for name in (MANIFEST, DR_CSV, "train.csv", "valid.csv", "test.csv"):
                (self.out / name).unlink(missing_ok=True)
            return None
        return old

    # -- paths
    def split_dir(self, split: str) -> str:
        return CHEXPERT_SPLIT_FILES[split][1] if self.layout == "chexpert" else split

    def rel_path(self, split: str, index: int, ident: str, label: Any) -> str:
        if self.layout == "folder":
            return f"{split}/{self.class_names[int(label)]}/{ident}.png"
        if self.layout == "csv":
            return f"{split}/{ident}.png"
        return f"{self.split_dir(split)}/patient{index + 1:05d}/study1/view1_frontal.png"

    def _groups(self, split: str, manifest: Mapping[str, Any] | None = None) -> list[str]:
        sd = CHEXPERT_SPLIT_FILES[split][1] if (manifest or {}).get("layout", self.layout) == "chexpert" else split
        dirs = (manifest or {}).get("mask_dirs", self.mask_dirs)
        return [sd, *(f"{d}/{sd}" for d in dirs.values())]

    def _remove_split(self, split: str, manifest: Mapping[str, Any] | None = None) -> None:
        for g in self._groups(split, manifest):
            target = self.out / g
            if target.is_dir():
                shutil.rmtree(target)

    # -- one split
    def write_split(self, split: str, items: Iterable[dict[str, Any]], n: int,
                    progress: Callable[[int], None] | None = None) -> int:
        if self.manifest and split in self.manifest.get("splits", {}) and not self.overwrite:
            raise DataError(self.out / self.split_dir(split), f"split '{split}' already written; use overwrite")
        self.out.mkdir(parents=True, exist_ok=True)
        stage = self.out / f".staging-{split}-{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        rows: list[dict[str, str]] = []
        count = 0
        try:
            for index, one in enumerate(items):
                rel = self.rel_path(split, index, one["id"], one["label"])
                _save_png_plain(stage / rel, one["image"])
                mask = np.asarray(one["mask"], bool)
                stem = Path(rel).with_suffix("")
                if mask.ndim == 3:  # one mask per finding
                    for j, name in enumerate(self.class_names):
                        _save_png_plain(stage / "masks" / stem / f"{name}.png", mask[j])
                else:
                    _save_png_plain(stage / "masks" / f"{stem}.png", mask)
                if "shortcut" in self.mask_dirs:
                    _save_png_plain(stage / "shortcut_masks" / f"{stem}.png", np.asarray(one["shortcut_mask"], bool))
                for name in self.extra:
                    _save_png_plain(stage / f"{name}_masks" / f"{stem}.png", np.asarray(one["extra_masks"][name], bool))
                rows.append(self._row(split, rel, one))
                count += 1
                if progress is not None:
                    progress(1)
            if count != n:
                raise DataError(self.out, f"split '{split}': expected {n} items, got {count}")
            self._remove_split(split, self.manifest)
            for g in self._groups(split):
                src = stage / g
                if src.exists():
                    (self.out / g).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, self.out / g)
                else:
                    (self.out / g).mkdir(parents=True, exist_ok=True)
        finally:
            if stage.exists():
                shutil.rmtree(stage)
        self._write_index(split, rows)
        self._write_manifest(split, count)
        return count

    def _row(self, split: str, rel: str, one: Mapping[str, Any]) -> dict[str, str]:
        if self.layout == "csv":
            return {"image": one["id"], "level": str(int(one["label"])), "split": split}
        if self.layout == "chexpert":
            rng = np.random.default_rng(derive_seed("chexpert-meta", self.config["seed"], one["id"]))
            row = {"Path": f"{self.out.resolve().name}/{rel}", "Sex": "Female" if rng.random() < 0.5 else "Male",
                   "Age": str(int(rng.integers(18, 91))), "Frontal/Lateral": "Frontal",
                   "AP/PA": "AP" if rng.random() < 0.6 else "PA"}
            lab = np.asarray(one["label"], np.float32)
            by_name = dict(zip(self.class_names, lab, strict=True))
            for name in _chexpert_order(self.class_names):
                v = float(by_name[name])
                row[name] = "" if np.isnan(v) else f"{v:.1f}"
            return row
        return {}

    def _write_index(self, split: str, rows: list[dict[str, str]]) -> None:
        if self.layout == "csv":
            path = self.out / DR_CSV
            old: list[dict[str, str]] = []
            if path.is_file():
                with open(path, newline="", encoding="utf-8") as fh:
                    old = [r for r in csv.DictReader(fh) if r.get("split") != split]
            order = {"train": 0, "val": 1, "test": 2}
            merged = sorted(old + rows, key=lambda r: order.get(r["split"], 3))  # stable within a split
            atomic_write_text(path, _csv_text(["image", "level", "split"], merged))
        elif self.layout == "chexpert":
            header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *_chexpert_order(self.class_names)]
            atomic_write_text(self.out / CHEXPERT_SPLIT_FILES[split][0], _csv_text(header, rows))

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"layout": self.layout, "task": self.task, "mask_dir": "masks",
                                "extra_mask_dirs": {k: v for k, v in self.mask_dirs.items() if k != "lesion"}}
        if self.layout == "folder":
            spec["classes"] = self.class_names
        elif self.layout == "csv":
            spec.update(csv=DR_CSV, image_column="image", label_column="level", split_column="split",
                        image_dir=["train", "val", "test"], image_suffix=".png", classes=self.class_names)
        else:
            spec.update(findings=self.class_names, frontal_only=True)
        return spec

    def _write_manifest(self, split: str, count: int) -> None:
        splits = dict((self.manifest or {}).get("splits", {}))
        splits[split] = count
        order = ("train", "val", "test")
        self.manifest = {"format": FORMAT, "version": 1, **self.config, "task": self.task,
                         "class_names": self.class_names, "channels": self.channels, "layout": self.layout,
                         "splits": {s: splits[s] for s in order if s in splits}, "mask_dirs": self.mask_dirs,
                         "spec": self.spec()}
        atomic_write_json(self.out / MANIFEST, self.manifest)


def _chexpert_order(names: list[str]) -> list[str]:
    """Findings in CheXpert's column order (unknown names after, in the given order)."""
    known = [n for n in CHEXPERT_FINDINGS if n in names]
    return known + [n for n in names if n not in known]


def _csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_study(study: SyntheticStudy, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a generated :class:`SyntheticStudy` (one split) into ``out_dir`` in its real layout.

    Call once per split into the same folder to build train / val / test; a split already there
    is refused unless ``overwrite``. Returns the manifest path.
    """
    w = _StudyWriter(Path(out_dir), study=study.study, task=study.task, class_names=study.class_names,
                     channels=int(study.images.shape[-1]), seed=study.seed, size=int(study.images.shape[1]),
                     shortcut=study.shortcut, options=study.options, extra_masks=sorted(study.extra_masks),
                     overwrite=overwrite)

    def items() -> Iterable[dict[str, Any]]:
        for i in range(len(study)):
            yield {"image": study.images[i], "label": study.labels[i], "mask": study.masks[i], "id": study.ids[i],
                   "shortcut_mask": None if study.shortcut_masks is None else study.shortcut_masks[i],
                   "extra_masks": {k: v[i] for k, v in study.extra_masks.items()}}

    w.write_split(study.split, items(), len(study))
    return Path(out_dir) / MANIFEST


def write_synthetic(study: str, out_dir: str | Path, n: Mapping[str, int], *, size: int = 128, seed: int = 0,
                    shortcut: float | None = None, overwrite: bool = False,
                    progress: Callable[[str, int], Callable[[int], None]] | None = None, **options: Any) -> Path:
    """Render and write a synthetic study split by split, one image at a time (bounded memory).

    ``n``: images per split, e.g. ``{"train": 700, "val": 150, "test": 150}``. ``progress(split,
    total)`` may return a callback advanced by 1 per image. Same files as ``generate`` +
    :func:`write_study`. Returns the manifest path.
    """
    from medxai.data.synthetic import generate_one
    from medxai.data.synthetic._api import STUDY_REGISTRY, _check_args, _resolve

    spec = STUDY_REGISTRY.get(study)
    for split in n:
        _check_args(study, size, seed, split, shortcut)
    resolved = _resolve(spec, options)
    w = _StudyWriter(Path(out_dir), study=study, task=spec.task, class_names=list(spec.class_names),
                     channels=spec.channels, seed=seed, size=size, shortcut=shortcut, options=resolved,
                     extra_masks=sorted(spec.extra_masks), overwrite=overwrite)
    for split, count in n.items():
        cb = progress(split, count) if progress is not None else None
        items = (generate_one(study, i, size=size, seed=seed, split=split, shortcut=shortcut, **options)
                 for i in range(count))
        w.write_split(split, items, count, cb)
    return Path(out_dir) / MANIFEST

