"""Dataset layouts on disk -> a table of records (image path, label, id, split), read without decoding.

Layouts (documented in docs/data-layouts.md):

- ``folder``: ``root/{train,val,test}/{CLASS}/*`` (Kaggle chest X-ray pneumonia) or ``root/{CLASS}/*``.
- ``csv``: an image column and a label column (Kaggle DR ``trainLabels.csv``: image, level;
  HAM10000 metadata: image_id, dx); split from a column or a seeded fraction (by group).
- ``chexpert``: ``train.csv`` / ``valid.csv`` (Path, Sex, Age, Frontal/Lateral, AP/PA, findings); a test
  split from ``test.csv``, ``splits: {test: valid}`` or ``test_from: train`` (seeded by patient).
- ``medmnist``: one ``.npz`` with ``{train,val,test}_{images,labels}`` (handled by the dataset).

Auto-detection reads a ``medxai.json`` manifest first (what ``write_study`` leaves), then looks
for the files each layout is known by. Record ids are unique: the image path relative to the root
without its suffix (a CSV's ``id_column`` when given); a repeated id is a DataError naming both.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medxai._util.io import safe_yaml_load
from medxai._util.seed import derive_seed
from medxai.data.io import DEFAULT_MAX_PIXELS, WINDOW_PRESETS
from medxai.data.labels import apply_uncertainty, resolve_findings
from medxai.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
MANIFEST = "medxai.json"
IMAGE_COLUMNS = ("image", "image_id", "Path", "path", "filename", "file", "image_path", "img")
LABEL_COLUMNS = ("level", "dx", "label", "labels", "diagnosis", "class", "target")
CHEXPERT_FRONTAL = "Frontal/Lateral"

__all__ = ["MANIFEST", "DatasetSpec", "Record", "Table", "bin_label", "build_table", "canonical_split", "load_spec"]

#: Group values that mean "not recorded" (compared lower-cased, stripped); they become "missing".
MISSING_VALUES = ("", "na", "n/a", "nan", "none", "null", "unknown")
#: Window names only the volume reader knows (medxai.data.volumes.VOLUME_WINDOWS).
#: What a volume path ends with (NIfTI); volume CSVs and folders are detected by it.
VOLUME_SUFFIXES = (".nii", ".nii.gz")


class DatasetSpec(BaseModel):
    """Everything ``open_dataset`` can be told about a dataset (a dict, a YAML file, or keywords)."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["auto", "folder", "csv", "chexpert", "medmnist", "volumes"] = "auto"
    root: str | None = None
    csv: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    id_column: str | None = None
    group_column: str | None = None
    image_dir: str | list[str] | None = None
    image_suffix: str | None = None
    classes: list[str] | None = None
    other_classes: Literal["error", "drop"] = "error"
    task: Literal["binary", "multiclass", "ordinal", "multilabel"] | None = None
    val_fraction: float = Field(0.0, ge=0.0, le=1.0)
    test_fraction: float = Field(0.0, ge=0.0, le=1.0)
    split_seed: int = 0
    findings: str | list[str] = "five"
    uncertainty: Literal["zeros", "ones", "ignore", "random"] = "ignore"
    uncertainty_seed: int = 0
    frontal_only: bool = True
    npz: str | None = None
    mask_dir: str | None = None
    extra_mask_dirs: dict[str, str] = Field(default_factory=dict)
    boxes: str | None = None
    channels: Literal[1, 3] | None = None
    bits: int | Literal["auto"] | None = None
    window: str | list[float] | None = None
    frame: int | None = Field(None, ge=0)
    splits: dict[str, str] = Field(default_factory=dict)
    test_from: Literal["train", "valid"] | None = None
    allow_outside_root: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    groups: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    # volumes layout (medxai.data.volumes): the CSV's mask column, a voxel spacing (mm) and / or a grid to
    # resample to
    mask_column: str | None = None
    spacing: list[float] | None = None
    volume_size: int | list[int] | None = None

    @field_validator("spacing")
    @classmethod
    def _check_spacing(cls, value: list[float] | None) -> list[float] | None:
        """[sd, sh, sw] in mm, each finite and positive."""
        if value is not None and (len(value) != 3 or not all(math.isfinite(v) and v > 0 for v in value)):
            raise ValueError(f"spacing must be [sd, sh, sw] in mm, three positive numbers, got {value}")
        return value

    @field_validator("volume_size")
    @classmethod
    def _check_volume_size(cls, value: int | list[int] | None) -> int | list[int] | None:
        """A cube side or [D, H, W], positive."""
        sizes = [value] if isinstance(value, int) else value
        if sizes is not None and (len(sizes) not in (1, 3) or any(v < 1 for v in sizes)):
            raise ValueError(f"volume_size must be a positive integer or [D, H, W], got {value}")
        return value

    @field_validator("bits", mode="before")
    @classmethod
    def _check_bits(cls, value: Any) -> Any:
        """Significant bits per sample: 1..16, "auto" (PNG sBIT / DICOM BitsStored) or None (the container's)."""
        if isinstance(value, bool) or (isinstance(value, int) and not 1 <= value <= 16):
            raise ValueError(f"bits must be in [1, 16], 'auto' or null, got {value}")
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str | list[float] | None) -> str | list[float] | None:
        """"minmax", a preset name, or [center, width] with width > 0."""
        if isinstance(value, str):
            if value.strip().lower() not in ("minmax", *WINDOW_PRESETS):
                raise ValueError(f"window must be minmax, [center, width] or one of "
                                 f"{sorted(WINDOW_PRESETS)}, "
                                 f"got {value!r}")
            return value.strip().lower()
        if value is not None and (len(value) != 2 or not all(map(math.isfinite, value)) or value[1] <= 0):
            raise ValueError(f"window must be [center, width] with finite numbers and width > 0, got {value}")
        return value

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: dict[str, str]) -> dict[str, str]:
        """{requested split: CSV split}, e.g. {test: valid}; names are canonicalised (valid -> val)."""
        out: dict[str, str] = {}
        for k, v in value.items():
            if str(k).strip().lower() not in SPLIT_ALIASES or str(v).strip().lower() not in SPLIT_ALIASES:
                raise ValueError(f"splits: map a split to a split ({'/'.join(SPLITS)}), got {k}: {v}")
            out[SPLIT_ALIASES[str(k).strip().lower()]] = SPLIT_ALIASES[str(v).strip().lower()]
        return out

    @field_validator("classes", mode="before")
    @classmethod
    def _check_classes(cls, value: Any) -> Any:
        """Class names are unique (numbers compared as numbers: "2" and "2.0" are one class); YAML numbers
        become their names ("2")."""
        if isinstance(value, (list, tuple)):
            value = [_canon_label(str(c)) if isinstance(c, (int, float)) and not isinstance(c, bool) else c
                     for c in value]
            keys = [_class_key(c) if isinstance(c, str) else c for c in value]
            dup = next((j for j in range(len(keys)) if keys[j] in keys[:j]), None)
            if dup is not None:
                raise ValueError(f"classes: '{value[dup]}' repeats '{value[keys.index(keys[dup])]}' (numbers compare "
                                 f"as numbers), got {value}")
        return value

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: dict[str, str | dict[str, Any]]) -> dict[str, str | dict[str, Any]]:
        """``{name: COLUMN}`` or ``{name: {column: COLUMN, bins: [e0, e1, ...]}}`` (strictly increasing edges)."""
        for name, g in value.items():
            if isinstance(g, str):
                continue
            if set(g) - {"column", "bins"} or not isinstance(g.get("column"), str):
                raise ValueError(f"group '{name}': give a column name or {{column: COLUMN, bins: [edges]}}, got {g}")
            bins = g.get("bins")
            if bins is not None:
                ok = isinstance(bins, list) and len(bins) >= 2 and all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bins)
                if not ok or any(b >= c for b, c in itertools.pairwise(bins)):
                    raise ValueError(f"group '{name}': bins must be at least two finite, strictly increasing "
                                     f"numbers, got {bins}")
        return value


@dataclass
class Record:
    """One image: absolute ``path``, ``rel`` path (posix, relative to the root when inside it), ``id`` (unique in
    its table: the path relative to the root without suffix, or a CSV's id column), label, split; ``groups``:
    its metadata group values (spec ``groups``), e.g. {"sex": "F", "age": "[40, 60)"}; ``row``: its CSV line."""

    path: Path
    rel: str
    id: str
    label: Any
    split: str | None
    groups: dict[str, str] = field(default_factory=dict)
    row: int | None = None  # the CSV line (header = 1) the record comes from


@dataclass
class Table:
    """A layout's records and what they mean. ``raw_labels``: CheXpert values before the policy."""

    layout: str
    root: Path
    source: Path
    records: list[Record]
    class_names: list[str]
    task: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    raw_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    split_source: str | None = None  # where the split's records come from, e.g. "valid.csv" (CheXpert)


def canonical_split(split: str | None) -> str | None:
    if split is None:
        return None
    key = str(split).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ConfigError(f"unknown split {split!r}; use one of {SPLITS}")
    return SPLIT_ALIASES[key]


# ----------------------------------------------------------------------------- spec resolution


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = safe_yaml_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise DataError(path, f"invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise DataError(path, "a dataset spec file must hold a mapping of keys")
    return data


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"invalid manifest: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise DataError(path, "invalid manifest: no 'spec' mapping")
    return data


#: Spec keys a dataset's own manifest may not set: they guard the reader against the dataset.
_MANIFEST_FORBIDDEN = ("allow_outside_root", "max_pixels", "root")
#: Spec keys naming files or folders relative to the root: a manifest's must stay inside it.
_SIDECAR_KEYS = ("csv", "npz", "mask_dir", "boxes", "image_dir")


def _manifest_spec(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """The spec of a dataset's ``medxai.json``: it comes with the (untrusted) dataset, so it may not
    widen the reader's guards nor name files outside its folder; the caller's options may."""
    spec = dict(manifest["spec"])
    bad = [k for k in _MANIFEST_FORBIDDEN if k in spec]
    if bad:
        raise DataError(path, f"invalid manifest: it may not set {', '.join(bad)} (only the caller can, "
                              "as an open_dataset option)")
    rels: list[tuple[str, Any]] = [(k, spec.get(k)) for k in _SIDECAR_KEYS]
    if isinstance(spec.get("image_dir"), list):
        rels = [r for r in rels if r[0] != "image_dir"] + [("image_dir", d) for d in spec["image_dir"]]
    extra = spec.get("extra_mask_dirs")
    if isinstance(extra, dict):
        rels += [(f"extra_mask_dirs.{n}", d) for n, d in extra.items()]
    folder = path.parent.resolve()
    for key, value in rels:
        if value is None:
            continue
        if not isinstance(value, str) or "\x00" in value:
            raise DataError(path, f"invalid manifest: {key} must be a path string, got {value!r}")
        target = (folder / value).resolve()
        if target != folder and folder not in target.parents:
            raise DataError(path, f"invalid manifest: {key}={value!r} leaves the dataset folder")
    return spec


def load_spec(spec: str | os.PathLike | dict[str, Any] | DatasetSpec, overrides: dict[str, Any] | None = None
              ) -> tuple[DatasetSpec, Path, dict[str, Any] | None]:
    """Resolve a path / dict / YAML into (spec with a layout, root folder, manifest or None)."""
    manifest = None
    if isinstance(spec, DatasetSpec):
        data = spec.model_dump(exclude_unset=True)
        base = Path.cwd()
    elif isinstance(spec, dict):
        data, base = dict(spec), Path.cwd()
    else:
        path = Path(spec).expanduser()
        if not _exists(path):
            raise DataError(path, "dataset path not found")
        path = path.absolute()  # a relative root below would otherwise be joined to itself (ds/ds)
        suffix = path.suffix.lower()
        if path.is_file() and suffix in (".yaml", ".yml"):
            data, base = _read_yaml(path), path.parent
        elif path.is_file() and path.name == MANIFEST:
            manifest = _read_manifest(path)
            data, base = {**_manifest_spec(manifest, path), "root": str(path.parent)}, path.parent
        elif path.is_file() and suffix == ".npz":
            data, base = {"layout": "medmnist", "root": str(path.parent), "npz": path.name}, path.parent
        elif path.is_file() and suffix == ".csv":
            data, base = {"root": str(path.parent), "csv": path.name}, path.parent
        elif path.is_dir():
            if (path / MANIFEST).is_file():
                manifest = _read_manifest(path / MANIFEST)
                data = {**_manifest_spec(manifest, path / MANIFEST), "root": str(path)}
            else:
                data = {"root": str(path)}
            base = path
        else:
            raise DataError(path, "not a dataset: expected a folder, a .csv, a .npz, a .yaml spec or medxai.json")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        parsed = DatasetSpec(**data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid dataset spec: {errs}") from None
    root = Path(parsed.root).expanduser() if parsed.root else base
    if not root.is_absolute():
        root = base / root
    if not _exists(root) or not root.is_dir():
        raise DataError(root, "dataset root is not a folder")
    if parsed.layout == "auto":
        found = _detect(root, parsed)
        if "root" in found:
            root = Path(found["root"])
        parsed = parsed.model_copy(update=found)
    return parsed, root, manifest


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__")))
    except OSError as exc:
        raise DataError(folder, f"cannot list folder: {exc}") from None


def _has_images(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return True
    return False


def _has_volumes(folder: Path, depth: int = 2) -> bool:
    """The first image file met in ``folder`` (and up to ``depth`` levels below, depth first, stopping at the
    first decision) is a NIfTI file. DICOM series folders are not detected (their slices look like 2-D
    DICOMs): give layout: volumes."""
    return _first_kind(folder, depth) == "volume"


def _first_kind(folder: Path, depth: int) -> str | None:
    try:
        kids = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return None
    for p in kids:
        low = p.name.lower()
        if low.endswith(VOLUME_SUFFIXES) and p.is_file():
            return "volume"
        if low.endswith(IMAGE_SUFFIXES) and p.is_file():
            return "image"
    for p in kids if depth > 0 else ():
        kind = _first_kind(p, depth - 1) if p.is_dir() else None
        if kind is not None:
            return kind
    return None


def _volume_csv(path: Path, root: Path, cols: list[str]) -> bool:
    """A CSV whose ``path`` column's first value is a NIfTI file or a folder (a volume CSV)."""
    import csv

    if "path" not in cols:
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            row = next(csv.DictReader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    value = str((row or {}).get("path") or "").strip()
    if not value or "\x00" in value:
        return False
    return value.lower().endswith(VOLUME_SUFFIXES) or _is_dir(root / value)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _detect(root: Path, spec: DatasetSpec, depth: int = 0) -> dict[str, Any]:
    """Guess the layout of ``root``; returns the spec keys to set."""
    if spec.csv:
        csv = root / spec.csv
        cols = _csv_columns(csv)
        if "Path" in cols and any(c in cols for c in (CHEXPERT_FRONTAL, "Cardiomegaly", "No Finding")):
            return {"layout": "chexpert"}
        return {"layout": "volumes" if _volume_csv(csv, root, cols) else "csv"}
    if spec.npz:
        return {"layout": "medmnist"}
    for name in ("train.csv", "valid.csv"):
        if (root / name).is_file() and "Path" in _csv_columns(root / name):
            return {"layout": "chexpert"}
    if (root / "trainLabels.csv").is_file():
        return {"layout": "csv", "csv": "trainLabels.csv"}
    for name in ("HAM10000_metadata.csv", "HAM10000_metadata", "metadata.csv"):
        if (root / name).is_file():
            return {"layout": "csv", "csv": name}
    kids = _children(root)
    npz = [p for p in kids if p.suffix.lower() == ".npz" and p.is_file()]
    if len(npz) == 1 and not any(p.is_dir() for p in kids):
        return {"layout": "medmnist", "npz": npz[0].name}
    dirs = [p for p in kids if p.is_dir()]
    if any(p.name not in {spec.mask_dir, *spec.extra_mask_dirs.values()} and _has_volumes(p) for p in dirs):
        return {"layout": "volumes"}
    if any(p.name.lower() in SPLIT_ALIASES for p in dirs):
        return {"layout": "folder"}
    if len(dirs) == 1 and depth < 2:  # a wrapper folder, e.g. chest_xray/chest_xray/{train,val,test}
        try:
            sub = _detect(dirs[0], spec, depth + 1)
        except DataError:
            sub = None
        wrapper = sub is not None and (sub["layout"] != "folder" or any(
            p.is_dir() and p.name.lower() in SPLIT_ALIASES for p in _children(Path(sub.get("root", dirs[0])))))
        if wrapper:
            return {**sub, "root": sub.get("root", str(dirs[0]))}
    skip = {spec.mask_dir, *spec.extra_mask_dirs.values()}
    if any(p.name not in skip and _has_images(p) for p in dirs):
        return {"layout": "folder"}
    csvs = [p for p in kids if p.suffix.lower() == ".csv"]
    if len(csvs) == 1:
        return {"layout": "volumes" if _volume_csv(csvs[0], root, _csv_columns(csvs[0])) else "csv",
                "csv": csvs[0].name}
    raise DataError(root, "cannot detect the dataset layout (no medxai.json, train.csv/valid.csv, trainLabels.csv, "
                          "HAM10000 metadata, .npz, or {train,val,test}/CLASS folders); give a spec with 'layout'")


# ------------------------------------------------------------------------------------ helpers


def _csv_columns(path: Path) -> list[str]:
    import csv

    _check_csv(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read CSV header: {' '.join(str(exc).split())}") from None
    if not header:
        raise DataError(path, "CSV file has no header row")
    return [h.strip() for h in header]


def _check_csv(path: Path) -> None:
    problem = _file_problem(path)
    if problem:
        raise DataError(path, problem)


def read_csv(path: Path):
    """A CSV as strings (blanks stay ""), header names stripped; errors become DataError."""
    import pandas as pd

    _check_csv(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except Exception as exc:  # EmptyDataError, ParserError, UnicodeDecodeError
        raise DataError(path, f"cannot parse CSV: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _need(df: Any, path: Path, column: str, what: str) -> None:
    if column not in df.columns:
        raise DataError(path, f"missing column '{column}' ({what}); columns are {list(df.columns)}")


def _pick(df: Any, path: Path, given: str | None, candidates: tuple[str, ...], what: str) -> str:
    if given is not None:
        _need(df, path, given, what)
        return given
    for c in candidates:
        if c in df.columns:
            return c
    raise DataError(path, f"no {what} column: expected one of {list(candidates)} (set {what}_column); "
                          f"columns are {list(df.columns)}")


def _lexical_rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as written (symlinks and ``..`` not resolved), posix; absolute outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _strip_suffix(value: str) -> str:
    p = PurePosixPath(value.replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix.lower() in IMAGE_SUFFIXES else str(p)


class _Collector:
    """Raise or collect record-level problems according to ``on_error``."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []

    def bad(self, path: Path | str, reason: str) -> None:
        if self.on_error == "raise":
            raise DataError(path, reason)
        self.skipped.append((str(path), reason))


def _locate(root_resolved: Path, candidate: Path, allow_outside: bool) -> tuple[Path, str] | str:
    """(path, rel) for a file inside the root, or a reason string."""
    if "\x00" in str(candidate):
        return "path contains a NUL byte"
    try:
        resolved = candidate.resolve()
        resolved.exists()  # raises for names too long for the file system
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot resolve path: {exc}"
    try:
        rel = resolved.relative_to(root_resolved).as_posix()
    except ValueError:
        if not allow_outside:
            return f"path leaves the dataset root {root_resolved} (set allow_outside_root=True to allow it)"
        rel = resolved.as_posix()
    return resolved, rel


def _exists(path: Path) -> bool:
    """``path.exists()``, False for names the file system cannot hold (too long, NUL)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _file_problem(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except (OSError, ValueError) as exc:
        return f"cannot stat file: {exc}"
    if not path.is_file():
        return "not a file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _hash_split(key: str, seed: int, val: float, test: float) -> str:
    if val + test > 1:
        raise ConfigError(f"val_fraction + test_fraction must be <= 1, got {val} + {test}")
    u = (derive_seed("split", int(seed), key) >> 11) / float(2**52)
    return "test" if u < test else "val" if u < test + val else "train"


def _number(value: str) -> float | None:
    """``value`` as a finite number, else None ("nan", "inf" and words are not numbers)."""
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _class_key(value: str) -> tuple[str, Any]:
    """What labels are compared by: numbers as numbers ("2.0" == "2" == "02"), other values as text."""
    f = _number(value)
    return ("num", f) if f is not None else ("str", value)


def _canon_label(value: str) -> str:
    """A label's class name: an integral number as an integer ("2.0" -> "2"), any other value unchanged."""
    f = _number(value)
    if f is None:
        return value
    return str(int(f)) if f == int(f) else value


def _found_classes(labels: list[str]) -> list[str]:
    """The classes a label column holds (no list declared): one per value, numbers compared as numbers
    and sorted numerically (0, 1, 2, 10); blanks and missing markers (NA, nan, ...) are no class."""
    seen: dict[tuple[str, Any], str] = {}
    for v in labels:
        if v.lower() not in MISSING_VALUES:
            seen.setdefault(_class_key(v), _canon_label(v))
    return _sort_classes(list(seen.values()))


def _check_unique_ids(table: Table, id_column: str | None) -> None:
    """Two records with one id would be paired as one image: refuse, naming both."""
    first: dict[str, Record] = {}
    for r in table.records:
        other = first.setdefault(r.id, r)
        if other is r:
            continue
        if id_column is not None:
            raise DataError(table.source, f"id '{r.id}' (column '{id_column}') repeats: rows {other.row} and {r.row}")
        where = f" (rows {other.row} and {r.row} of {table.source.name})" if r.row is not None else ""
        raise DataError(r.path, f"id '{r.id}' is also the id of {other.path}{where}: ids must be unique")


def _sort_classes(values: list[str]) -> list[str]:
    """Numbers numerically (0, 1, 2, 10), else text order."""
    if values and all(_number(v) is not None for v in values):
        return sorted(values, key=lambda v: float(v))
    return sorted(values)


def _default_task(class_names: list[str], label_column: str | None = None) -> str:
    if label_column == "level":
        return "ordinal"
    return "binary" if len(class_names) == 2 else "multiclass"


def _label_index(value: str, classes: list[str]) -> int | None:
    """The index of ``value`` in ``classes``: the same text, or the same number ("2.0" against class "2")."""
    if value in classes:
        return classes.index(value)
    key = _class_key(value)
    if key[0] == "num":
        for i, c in enumerate(classes):
            if _class_key(c) == key:
                return i
    return None


def bin_label(value: float, edges: list[float]) -> str:
    """The bin of ``value``: "[lo, hi)" (half-open; the last bin too), "other" outside all bins."""
    for lo, hi in itertools.pairwise(edges):
        if lo <= value < hi:
            return f"[{lo:g}, {hi:g})"
    return "other"


def _group_values(df: Any, path: Path, spec: DatasetSpec) -> dict[str, list[str | None]]:
    """Per-row group values of a CSV (``None``: a binned column holds a non-number, the row is bad)."""
    out: dict[str, list[str | None]] = {}
    for name, g in spec.groups.items():
        column, bins = (g, None) if isinstance(g, str) else (g["column"], g.get("bins"))
        _need(df, path, column, f"group '{name}'")
        vals: list[str | None] = []
        for raw in df[column].tolist():
            v = str(raw).strip()
            if v.lower() in MISSING_VALUES:
                vals.append("missing")
            elif bins is None:
                vals.append(v)
            else:
                try:
                    f = float(v)
                except ValueError:
                    vals.append(None)
                    continue
                vals.append("missing" if math.isnan(f) else bin_label(f, [float(b) for b in bins]))
        out[name] = vals
    return out


def _row_groups(groups: dict[str, list[str | None]], i: int, path: Path, row: str, spec: DatasetSpec,
                col: _Collector) -> dict[str, str] | None:
    """Row ``i``'s group values, or None (reported to ``col``) when a binned column is not a number."""
    out: dict[str, str] = {}
    for name, vals in groups.items():
        v = vals[i]
        if v is None:
            g = spec.groups[name]
            column = g if isinstance(g, str) else g["column"]
            col.bad(path, f"{row}: column '{column}' (group '{name}', binned): value is not a number")
            return None
        out[name] = v
    return out


# ------------------------------------------------------------------------------------ layouts


def build_table(spec: DatasetSpec, root: Path, split: str | None, on_error: str) -> Table:
    """Read the layout's index (no image decoding): records of ``split`` (None: all splits)."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    split = canonical_split(split)
    if spec.layout == "folder":
        table = _folder(spec, root, split, _Collector(on_error))
    elif spec.layout == "csv":
        table = _csv(spec, root, split, _Collector(on_error))
    elif spec.layout == "chexpert":
        table = _chexpert(spec, root, split, _Collector(on_error))
    else:
        raise ConfigError(f"layout {spec.layout!r} has no record table")
    _check_unique_ids(table, spec.id_column if spec.layout == "csv" else None)
    return table


def _folder(spec: DatasetSpec, root: Path, split: str | None, col: _Collector) -> Table:
    if spec.groups:
        raise ConfigError(f"groups: the folder layout ({root}) has no metadata columns to group by; "
                          "use a csv or chexpert layout")
    root_r = root.resolve()
    skip = {spec.mask_dir, *spec.extra_mask_dirs.values()}
    dirs = [p for p in _children(root) if p.is_dir() and p.name not in skip]
    split_dirs = [(SPLIT_ALIASES[p.name.lower()], p) for p in dirs if p.name.lower() in SPLIT_ALIASES]
    with_splits = bool(split_dirs)
    groups = split_dirs if with_splits else [(None, root)]
    class_dirs: list[tuple[str | None, Path]] = []
    for s, d in groups:
        class_dirs += [(s, c) for c in _children(d) if c.is_dir() and c.name not in skip]
    if not class_dirs:
        raise DataError(root, "folder layout without class folders (expected root/{train,val,test}/CLASS/*)")
    found = _sort_classes(sorted({c.name for _, c in class_dirs}))
    classes = list(spec.classes) if spec.classes else found
    records: list[Record] = []
    keys: list[str] = []  # the split hash key: the path inside the class folder (as before ids were unique)
    dropped = 0
    for s, cdir in class_dirs:
        label = _label_index(cdir.name, classes)
        if label is None:
            if spec.other_classes == "drop":
                dropped += 1
                continue
            raise DataError(cdir, f"class folder '{cdir.name}' is not in the class list {classes}")
        if with_splits and split is not None and s != split:
            continue
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
        for f in files:
            loc = _locate(root_r, f, spec.allow_outside_root)
            if isinstance(loc, str):
                col.bad(f, loc)
                continue
            problem = _file_problem(loc[0])
            if problem:
                col.bad(f, problem)
                continue
            rel = f.relative_to(root).as_posix()
            records.append(Record(path=loc[0], rel=rel, id=_strip_suffix(rel), label=label, split=s))
            inner = f.relative_to(cdir).with_suffix("").as_posix()
            keys.append(inner if "/" in inner else f.stem)
    if not with_splits:
        records = _fraction_splits(records, spec, split, root, keys)
    notes = [f"{dropped} class folder(s) outside the class list dropped (other_classes: drop)"] if dropped else []
    return Table(layout="folder", root=root, source=root, records=records, class_names=classes,
                 task=spec.task or _default_task(classes), skipped=col.skipped, notes=notes)


def _fraction_splits(records: list[Record], spec: DatasetSpec, split: str | None, where: Path,
                     groups: list[str] | None = None) -> list[Record]:
    if spec.val_fraction > 0 or spec.test_fraction > 0:
        for i, r in enumerate(records):
            key = groups[i] if groups is not None else r.id
            r.split = _hash_split(key, spec.split_seed, spec.val_fraction, spec.test_fraction)
        return [r for r in records if split is None or r.split == split]
    if split is not None:
        raise ConfigError(f"{where}: no split folders or column; cannot select split {split!r} "
                          "(set val_fraction / test_fraction, or split_column)")
    return records


_DR_NAME = re.compile(r"^(\d+)_(left|right)$")


def row_split(df: Any, scol: str | None, i: int, path: Path, row: str, split: str | None,
              col: Any) -> tuple[bool, str | None]:
    """(keep the row, its split) from the split column ``scol`` (None: no column): an unknown split is
    a bad record; a row of another split than the one asked for is not kept."""
    if scol is None:
        return True, None
    raw = str(df[scol].iat[i]).strip().lower()
    if raw not in SPLIT_ALIASES:
        col.bad(path, f"{row}: column '{scol}': unknown split '{raw}' (use train/val/test)")
        return False, None
    rsplit = SPLIT_ALIASES[raw]
    return split is None or rsplit == split, rsplit


def _csv(spec: DatasetSpec, root: Path, split: str | None, col: _Collector) -> Table:
    if not spec.csv:
        raise ConfigError("csv layout needs 'csv' (the CSV file, relative to the root)")
    path = root / spec.csv
    df = read_csv(path)
    icol = _pick(df, path, spec.image_column, IMAGE_COLUMNS, "image")
    lcol = _pick(df, path, spec.label_column, LABEL_COLUMNS, "label")
    for c in (spec.split_column, spec.id_column, spec.group_column):
        if c is not None:
            _need(df, path, c, "as configured")
    gvals = _group_values(df, path, spec)
    scol = spec.split_column or ("split" if "split" in df.columns else None)
    gcol = spec.group_column or ("lesion_id" if "lesion_id" in df.columns else None)
    images = [str(v).strip() for v in df[icol].tolist()]
    labels = [str(v).strip() for v in df[lcol].tolist()]
    if spec.classes:
        classes = list(spec.classes)
    else:
        classes = _found_classes(labels)
        if lcol == "level" and classes and all(c.isdigit() for c in classes):
            classes = [str(i) for i in range(int(max(classes, key=int)) + 1)]
    if spec.image_dir is None:
        dirs = [root]
        if spec.csv == "trainLabels.csv" and (root / "train").is_dir():
            dirs = [root / "train"]
        ham = sorted(p for p in root.glob("HAM10000_images*") if p.is_dir())
        if ham:
            dirs = ham
    else:
        dirs = [root / d for d in ([spec.image_dir] if isinstance(spec.image_dir, str) else spec.image_dir)]
    root_r = root.resolve()
    suffixes = [spec.image_suffix] if spec.image_suffix else ["", *IMAGE_SUFFIXES]
    records: list[Record] = []
    groups: list[str] = []
    dropped = 0
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        row = f"row {i + 2}"  # the header is line 1
        if img == "":
            col.bad(path, f"{row}: empty value in column '{icol}'")
            continue
        idx = _label_index(lab, classes)
        if idx is None:
            if lab.lower() in MISSING_VALUES:
                col.bad(path, f"{row}: column '{lcol}': no label (value '{lab}')")
            elif spec.other_classes == "drop":
                dropped += 1
            else:
                col.bad(path, f"{row}: column '{lcol}': label '{lab}' is not in the class list {classes}")
            continue
        keep, rsplit = row_split(df, scol, i, path, row, split, col)
        if not keep:
            continue
        rgroups = _row_groups(gvals, i, path, row, spec, col)
        if rgroups is None:
            continue
        value = img.replace("\\", "/")
        bases = [Path(value)] if os.path.isabs(value) else [d / value for d in dirs]
        chosen: tuple[Path, str] | None = None
        reason = "file not found"
        first = None
        for base in bases:
            for suf in suffixes:
                cand = base.with_name(base.name + suf) if suf else base
                loc = _locate(root_r, cand, spec.allow_outside_root)
                if isinstance(loc, str):
                    reason, first = loc, cand
                    break
                if first is None:
                    first = cand
                if loc[0].is_file():
                    chosen, listed = loc, _lexical_rel(cand, root)
                    break
            if chosen is not None or reason != "file not found":
                break
        if chosen is None:
            col.bad(first or path, f"{reason} (listed in {path.name} {row}, column '{icol}')")
            continue
        problem = _file_problem(chosen[0])
        if problem:
            col.bad(chosen[0], f"{problem} (listed in {path.name} {row})")
            continue
        key = str(df[spec.id_column].iat[i]).strip() if spec.id_column else _strip_suffix(value)
        rid = key if spec.id_column else _strip_suffix(listed)
        records.append(Record(path=chosen[0], rel=chosen[1], id=rid, label=idx, split=rsplit, groups=rgroups,
                              row=i + 2))
        if gcol is not None:
            groups.append(str(df[gcol].iat[i]))
        else:  # the split hash key is the CSV value (as before ids were paths), so seeded splits stay put
            m = _DR_NAME.match(PurePosixPath(key).name)
            groups.append(m.group(1) if m else key)  # both eyes of a DR patient stay together
    if scol is None:
        kept = _fraction_splits(records, spec, split, path, groups)
    else:
        kept = records
    notes = [f"{dropped} row(s) with labels outside the class list dropped (other_classes: drop)"] if dropped else []
    return Table(layout="csv", root=root, source=path, records=kept, class_names=classes,
                 task=spec.task or _default_task(classes, lcol), skipped=col.skipped, notes=notes)


_CHEXPERT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan}


_CHEXPERT_CSV = {"train": "train.csv", "val": "valid.csv", "test": "test.csv"}
_PATIENT = re.compile(r"(patient\d+)")


def _chexpert_mapping(spec: DatasetSpec, root: Path) -> dict[str, tuple[str, str | None]]:
    """{requested split: (CSV split, part)}: part None (the whole CSV), "held" (the seeded test patients
    of ``test_from``) or "rest" (the CSV without them). ``splits`` / ``test_from`` change the default."""
    present = [s for s, f in _CHEXPERT_CSV.items() if (root / f).is_file()]
    if not present:
        raise DataError(root, "CheXpert layout without train.csv or valid.csv")
    mapping: dict[str, tuple[str, str | None]] = {s: (s, None) for s in present}
    for want, src in spec.splits.items():
        if src not in present:
            raise ConfigError(f"splits: {want}: {src}, but {root / _CHEXPERT_CSV[src]} does not exist")
        for other in [k for k, v in mapping.items() if v == (src, None) and k != want and k not in spec.splits]:
            del mapping[other]  # that CSV now serves `want` alone: the same images never sit in two splits
        mapping[want] = (src, None)
    if spec.test_from is not None:
        src = SPLIT_ALIASES[spec.test_from]
        if "test" in spec.splits or "test" in present:
            raise ConfigError(f"test_from: {root} already has a test split (test.csv or splits: {{test: ...}}); "
                              "drop test_from")
        if src not in present or not 0 < spec.test_fraction < 1:
            raise ConfigError(f"test_from: {spec.test_from} needs {_CHEXPERT_CSV[src]} in {root} and a "
                              f"test_fraction in (0, 1), got {spec.test_fraction}")
        mapping = {k: (v[0], "rest") if v == (src, None) else v for k, v in mapping.items()}
        mapping["test"] = (src, "held")
    return mapping


def _chexpert_sources(spec: DatasetSpec, root: Path, split: str | None
                      ) -> tuple[list[tuple[Path, dict[str | None, str]]], str]:
    """[(CSV, {part: requested split})] to read, and where each split comes from (``split_source``)."""
    if spec.csv:
        if spec.splits or spec.test_from:
            raise ConfigError("splits / test_from: not with 'csv' (one CSV names one split)")
        s = SPLIT_ALIASES.get(Path(spec.csv).stem.lower(), "train")
        if split is not None and s != split:
            raise DataError(root, f"no CSV for split '{split}' ({spec.csv} is the {s} split)")
        return [(root / spec.csv, {None: s})], spec.csv
    mapping = _chexpert_mapping(spec, root)
    if split is not None and split not in mapping:
        if split == "test" and not (root / "test.csv").is_file():
            raise ConfigError(f"split 'test': the CheXpert layout at {root} has only train.csv / valid.csv (no "
                              "test.csv); map it: splits: {test: valid}, or test_from: train with test_fraction "
                              "(e.g. 0.1) and split_seed (a seeded split of train by patient)")
        raise ConfigError(f"split '{split}': no CSV serves it in {root} (splits: {spec.splits}); map it with splits:")
    wanted = [split] if split is not None else [s for s in SPLITS if s in mapping]
    pct = f"{spec.test_fraction * 100:g}%"
    desc = {None: "{f}", "held": f"{{f}} (seeded {pct} by patient, split_seed {spec.split_seed})",
            "rest": f"{{f}} (without the seeded {pct} test patients, split_seed {spec.split_seed})"}
    sources: dict[str, dict[str | None, str]] = {}
    for s in wanted:
        src, part = mapping[s]
        sources.setdefault(src, {})[part] = s
    order = [c for c in SPLITS if c in sources]
    text = {s: desc[mapping[s][1]].format(f=_CHEXPERT_CSV[mapping[s][0]]) for s in wanted}
    source = text[split] if split is not None else "; ".join(f"{s}: {t}" for s, t in text.items())
    return [(root / _CHEXPERT_CSV[c], sources[c]) for c in order], source


def _patient(rid: str) -> str:
    """The CheXpert patient of a record id (``.../patient00001/study1/view1_frontal``)."""
    m = _PATIENT.search(rid)
    return m.group(1) if m else rid


def _chexpert(spec: DatasetSpec, root: Path, split: str | None, col: _Collector) -> Table:
    names = resolve_findings(spec.findings)
    files, split_source = _chexpert_sources(spec, root, split)
    root_r = root.resolve()
    records: list[Record] = []
    raws: list[list[float]] = []
    for path, want in files:
        df = read_csv(path)
        _need(df, path, "Path", "image path")
        for n in names:
            _need(df, path, n, "finding")
        if spec.frontal_only:
            _need(df, path, CHEXPERT_FRONTAL, "frontal filter; set frontal_only=False to read all views")
        values = {n: df[n].tolist() for n in names}
        gvals = _group_values(df, path, spec)
        paths = df["Path"].tolist()
        views = df[CHEXPERT_FRONTAL].tolist() if spec.frontal_only else None
        for i, value in enumerate(paths):
            row = f"row {i + 2}"
            if views is not None and str(views[i]).strip() != "Frontal":
                continue
            raw = []
            bad = None
            for n in names:
                v = str(values[n][i]).strip()
                if v not in _CHEXPERT_VALUES:
                    bad = f"{row}: column '{n}': value '{v}' is not one of 1, 0, -1 or blank"
                    break
                raw.append(_CHEXPERT_VALUES[v])
            if bad:
                col.bad(path, bad)
                continue
            rgroups = _row_groups(gvals, i, path, row, spec, col)
            if rgroups is None:
                continue
            value = str(value).strip().replace("\\", "/")
            parts = PurePosixPath(value).parts
            if not parts:
                col.bad(path, f"{row}: empty value in column 'Path'")
                continue
            strip = len(parts) > 1 and (parts[0] == root.name or parts[0].startswith("CheXpert"))
            relp = PurePosixPath(*parts[1:]) if strip else PurePosixPath(value)
            if os.path.isabs(value):
                cand = Path(value)
            else:
                cand = root / relp
                if not strip and not _exists(cand) and len(parts) > 1 and _exists(root / PurePosixPath(*parts[1:])):
                    relp = PurePosixPath(*parts[1:])
                    cand = root / relp
            loc = _locate(root_r, cand, spec.allow_outside_root)
            if isinstance(loc, str):
                col.bad(cand, f"{loc} (listed in {path.name} {row}, column 'Path')")
                continue
            problem = _file_problem(loc[0])
            if problem:
                col.bad(cand, f"{problem} (listed in {path.name} {row})")
                continue
            rid = _strip_suffix(relp.as_posix()) if not os.path.isabs(value) else _strip_suffix(value)
            part = None
            if None not in want:
                held = _hash_split(_patient(rid), spec.split_seed, 0.0, spec.test_fraction) == "test"
                part = "held" if held else "rest"
                if part not in want:
                    continue
            records.append(Record(path=loc[0], rel=loc[1], id=rid, label=None, split=want[part], groups=rgroups,
                                  row=i + 2))
            raws.append(raw)
    raw_arr = np.asarray(raws, dtype=np.float32).reshape(len(records), len(names))
    labels = apply_uncertainty(raw_arr, spec.uncertainty, names=names, keys=[r.id for r in records],
                               seed=spec.uncertainty_seed)
    for r, lab in zip(records, labels, strict=True):
        r.label = lab
    return Table(layout="chexpert", root=root, source=files[0][0], records=records, class_names=names,
                 task="multilabel", skipped=col.skipped, raw_labels=raw_arr, split_source=split_source)
