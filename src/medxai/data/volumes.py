"""Volumes (CT, MRI): NIfTI files and DICOM series in, windows, resampling, and the volume dataset.

Axis order: every volume is (D, H, W) = (slices, rows, columns), or (C, D, H, W), in voxel index order
as stored (never reoriented). For NIfTI, whose array is (i, j, k[, c]) with ``affine`` mapping
(i, j, k, 1) to RAS+ millimetres, D = k, H = j, W = i: the array is transposed (k, j, i) and
:attr:`Volume.affine` is the NIfTI affine with its first three columns reordered (k, j, i), so it maps
(d, h, w, 1) to RAS+ mm. For a DICOM series, H and W are the slices' Rows and Columns and D the slices
in increasing position along the slice normal n = row cosines x column cosines (Image Orientation
Patient); :attr:`Volume.affine` maps (d, h, w, 1) to LPS patient mm (DICOM's frame). ``spacing`` is
(sd, sh, sw) in mm: the norms of the affine's columns (NIfTI), the measured median slice step and
Pixel Spacing (DICOM).

Values: NIfTI with ``scl_slope`` / ``scl_inter`` applied; DICOM with the modality LUT (Rescale Slope /
Intercept, or a Modality LUT Sequence) applied per slice, so CT comes out in Hounsfield units. A window
(:data:`VOLUME_WINDOWS`, ``[center, width]`` or ``"minmax"``) maps values to [0, 1] by the linear VOI
function of DICOM PS3.3 C.11.2.1.2.1 (the one the 2-D reader applies). Every failure is a one-line
:class:`~medxai.errors.DataError` naming the file (or the series folder and the slice).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medxai.data.datasets import RecordViews, validate_records
from medxai.data.io import DEFAULT_MAX_PIXELS, WINDOW_PRESETS, _why, is_dicom
from medxai.errors import ConfigError, DataError

#: Named windows (center, width) in modality units (HU for CT): lung (-600, 1500), mediastinum (40, 400),
#: brain (40, 80), bone (400, 1800), abdomen (40, 400), soft_tissue (50, 350): the 2-D reader's presets.
VOLUME_WINDOWS: dict[str, tuple[float, float]] = dict(WINDOW_PRESETS)  # the 2-D presets, one table
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Slice steps: a step above GAP_FACTOR x the median is a missing slice; one differing from the median
#: by more than STEP_TOLERANCE (relative) is inconsistent spacing.
GAP_FACTOR, STEP_TOLERANCE = 1.5, 0.05

VolumeWindow = str | Sequence[float] | None

__all__ = [
    "NIFTI_SUFFIXES",
    "VOLUME_WINDOWS",
    "SyntheticVolumeDataset",
    "Volume",
    "VolumeDataset",
    "apply_window",
    "is_nifti",
    "load_volume",
    "load_volume_mask",
    "open_volumes",
    "read_dicom_series",
    "read_nifti",
    "read_volume",
    "resample",
    "resolve_volume_window",
    "volume_header",
    "write_dicom_series",
    "write_nifti",
    "write_synthetic_volumes",
]


@dataclass
class Volume:
    """A volume as read: ``array`` float32 (D, H, W) or (C, D, H, W) in the file's units (after the
    modality LUT / NIfTI scaling); ``spacing`` (sd, sh, sw) mm; ``affine`` 4x4 float64 mapping
    (d, h, w, 1) to mm (NIfTI: RAS+, DICOM: LPS); ``window`` the file's own (center, width) or None."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str
    window: tuple[float, float] | None = None


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_voxels(where: Path, shape: Sequence[int], max_voxels: int, what: str) -> None:
    n = math.prod(int(s) for s in shape)
    if n > max_voxels:
        dims = " x ".join(str(int(s)) for s in shape)
        raise DataError(where, f"refused: {what} {dims} = {n} voxels exceeds the limit of {max_voxels}")


# ------------------------------------------------------------------------------------ NIfTI


def _nifti_layout(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The shape as (i, j, k) or (i, j, k, c): trailing axes of length 1 after the third dropped."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    while len(dims) > 4 and dims[3] == 1:  # (i, j, k, 1, c): the NIfTI vector-data convention
        dims.pop(3)
    if len(dims) == 2:
        dims.append(1)
    if len(dims) not in (3, 4) or min(dims) <= 0:
        raise DataError(path, f"NIfTI shape {tuple(shape)}: need 3-D (i, j, k) or 4-D (i, j, k, c)")
    return tuple(dims)


def read_nifti(path: str | Path, *, max_voxels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """A ``.nii`` / ``.nii.gz`` file as float32 (D, H, W) (or (C, D, H, W) for a 4th axis) with
    ``scl_slope`` / ``scl_inter`` applied, its spacing from the affine (module docstring: axis order).
    The voxel count (all axes) is checked against ``max_voxels`` from the header, before decoding."""
    import nibabel as nib

    path = Path(path)
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise DataError(path, f"not a readable NIfTI file: {_why(exc)}") from None
    _check_voxels(path, shape, max_voxels, "NIfTI shape")
    dims = _nifti_layout(shape, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(dims)
    except Exception as exc:  # truncated data (EOFError / OSError), gzip CRC errors, ...
        raise DataError(path, f"truncated or corrupt NIfTI data: {_why(exc)}") from None
    if not np.isfinite(data).all():
        raise DataError(path, "NIfTI values are NaN or Inf (check the data and scl_slope / scl_inter)")
    arr = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    aff = affine.copy()
    aff[:, :3] = affine[:, [2, 1, 0]]
    spacing = tuple(float(np.linalg.norm(aff[:3, a])) for a in range(3))
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError(path, f"NIfTI affine gives a degenerate voxel spacing {spacing}")
    return Volume(np.ascontiguousarray(arr), spacing, aff, str(path))


def write_nifti(path: str | Path, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                origin: Sequence[float] = (0.0, 0.0, 0.0), dtype: Any = None, slope: float | None = None,
                inter: float | None = None) -> Path:
    """Write (D, H, W) or (C, D, H, W) as NIfTI-1 (the inverse of :func:`read_nifti`): stored (i, j, k[, c])
    = (W, H, D[, C]), affine diag(sw, sh, sd) with ``origin`` (x, y, z) mm. ``dtype`` (default: the
    array's) is the stored type; ``slope`` / ``inter`` are written as scl_slope / scl_inter (the array is
    then the stored values). ``.nii.gz`` compresses."""
    import nibabel as nib

    arr = np.asarray(array)
    if arr.ndim not in (3, 4):
        raise ValueError(f"write_nifti needs (D, H, W) or (C, D, H, W), got shape {arr.shape}")
    data = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(3, 2, 1, 0)
    sd, sh, sw = (float(s) for s in spacing)
    affine = np.diag([sw, sh, sd, 1.0])
    affine[:3, 3] = [float(v) for v in origin]
    data = np.ascontiguousarray(data.astype(dtype) if dtype is not None else data)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    if slope is not None or inter is not None:
        img.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, not a NIfTI file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")


# ------------------------------------------------------------------------------ DICOM series


@dataclass
class _Slice:
    path: Path
    uid: str | None
    rows: int
    cols: int
    iop: np.ndarray
    ipp: np.ndarray
    ps: np.ndarray
    window: tuple[float, float] | None
    thickness: float | None


def _series_files(folder: Path) -> list[Path]:
    """The folder's DICOM files (a DICOM suffix, the DICM magic, or no suffix), hidden files skipped."""
    if not folder.is_dir():
        raise DataError(folder, "DICOM series: not a folder")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(folder, f"cannot list the series folder: {_why(exc)}") from None
    files = [p for p in files if (p.suffix == "" or is_dicom(p)) and p.name.upper() != "DICOMDIR"]
    if not files:
        raise DataError(folder, "DICOM series: the folder holds no DICOM files")
    return files


def _floats(ds: Any, key: str, n: int, path: Path, series: Path) -> np.ndarray:
    value = ds.get(key)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except Exception:
        out = None
    if out is None or out.shape != (n,) or not np.isfinite(out).all():
        raise DataError(path, f"series {series.name}: {key} missing or invalid ({value!r})")
    return out


def _header(path: Path, series: Path) -> _Slice:
    import pydicom

    if path.stat().st_size == 0:
        raise DataError(path, f"series {series.name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    except Exception as exc:
        raise DataError(path, f"series {series.name}: not a readable DICOM slice: {_why(exc)}") from None
    if frames != 1:
        raise DataError(path, f"series {series.name}: multi-frame file ({frames} frames); a series folder holds "
                              "one slice per file")
    if photometric != "MONOCHROME2":
        raise DataError(path, f"series {series.name}: PhotometricInterpretation {photometric} (volumes read "
                              "MONOCHROME2 only)")
    if rows <= 0 or cols <= 0:
        raise DataError(path, f"series {series.name}: slice has no pixels (Rows={rows}, Columns={cols})")
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    window = None
    if wc is not None and ww is not None:
        first = (lambda v: float(v[0]) if isinstance(v, Sequence) and not isinstance(v, str) else float(v))
        window = (first(wc), first(ww))
    thick = ds.get("SliceThickness")
    uid = ds.get("SeriesInstanceUID")
    return _Slice(path, None if uid is None else str(uid), rows, cols,
                  _floats(ds, "ImageOrientationPatient", 6, path, series),
                  _floats(ds, "ImagePositionPatient", 3, path, series), _floats(ds, "PixelSpacing", 2, path, series),
                  window, float(thick) if thick not in (None, "") else None)


def _check_consistent(folder: Path, slices: list[_Slice]) -> None:
    """One series UID, one Rows x Columns, one orientation, one pixel spacing; else a DataError naming the slice."""
    s0 = slices[0]
    for s in slices[1:]:
        if s.uid != s0.uid:
            raise DataError(folder, f"mixed series: {s.path.name} has SeriesInstanceUID {s.uid}, {s0.path.name} "
                                    f"has {s0.uid}; put one series per folder")
        if (s.rows, s.cols) != (s0.rows, s0.cols):
            raise DataError(s.path, f"series {folder.name}: slice is {s.rows}x{s.cols} (Rows x Columns), "
                                    f"{s0.path.name} is {s0.rows}x{s0.cols}")
        if np.abs(s.iop - s0.iop).max() > 1e-4:
            raise DataError(s.path, f"series {folder.name}: inconsistent orientation: ImageOrientationPatient "
                                    f"{s.iop.tolist()} differs from {s0.path.name}'s {s0.iop.tolist()}")
        if np.abs(s.ps - s0.ps).max() > 1e-4 * max(1.0, float(s0.ps.max())):
            raise DataError(s.path, f"series {folder.name}: inconsistent spacing: PixelSpacing {s.ps.tolist()} "
                                    f"differs from {s0.path.name}'s {s0.ps.tolist()}")


def _order(folder: Path, slices: list[_Slice]) -> tuple[list[_Slice], float, np.ndarray]:
    """Slices sorted by Image Position Patient projected on the normal, the median step (mm), the normal.
    A gap above GAP_FACTOR x the median step is a missing slice; a step off the median by more than
    STEP_TOLERANCE is inconsistent spacing; positions off the normal line (gantry tilt) are refused."""
    row, col = slices[0].iop[:3], slices[0].iop[3:]
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01 or abs(float(row @ col)) > 1e-3:
        raise DataError(slices[0].path, f"series {folder.name}: ImageOrientationPatient {slices[0].iop.tolist()} "
                                        "is not two orthogonal unit vectors")
    pos = np.asarray([s.ipp @ normal for s in slices])
    idx = np.argsort(pos, kind="stable")
    ordered, pos = [slices[i] for i in idx], pos[idx]
    if len(ordered) == 1:
        step = ordered[0].thickness
        if step is None or not step > 0:
            raise DataError(ordered[0].path, f"series {folder.name}: one slice and no SliceThickness: the slice "
                                             "spacing is unknown")
        return ordered, float(step), normal
    steps = np.diff(pos)
    for k, st in enumerate(steps):
        if st < 1e-3:
            raise DataError(ordered[k + 1].path, f"series {folder.name}: slice at the same position "
                                                 f"({pos[k + 1]:.3f} mm along the normal) as {ordered[k].path.name}")
    med = float(np.median(steps))
    for k, st in enumerate(steps):
        a, b = ordered[k], ordered[k + 1]
        where = f"between {a.path.name} ({pos[k]:.3f} mm) and {b.path.name} ({pos[k + 1]:.3f} mm)"
        if st > GAP_FACTOR * med:
            raise DataError(folder, f"missing slice(s) {where}: step {st:.3f} mm is {st / med:.2f}x the median "
                                    f"step {med:.3f} mm")
        if abs(st - med) > STEP_TOLERANCE * med:
            raise DataError(b.path, f"series {folder.name}: inconsistent spacing {where}: step {st:.3f} mm, "
                                    f"median {med:.3f} mm")
    ps = float(ordered[0].ps.min())
    for s in ordered[1:]:
        d = s.ipp - ordered[0].ipp
        off = d - (d @ normal) * normal
        if float(np.linalg.norm(off)) > 0.05 * ps:
            raise DataError(s.path, f"series {folder.name}: slice position is {np.linalg.norm(off):.3f} mm off the "
                                    "slice normal (gantry tilt or sheared series): not supported")
    return ordered, med, normal


def _decode_slice(s: _Slice, folder: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(s.path, force=True)
            arr = apply_modality_lut(pixel_array(ds), ds).astype(np.float64)
    except Exception as exc:  # truncated pixel data, missing decoder, bad LUT, ...
        raise DataError(s.path, f"series {folder.name}: cannot decode slice pixel data: {_why(exc)}") from None
    if arr.shape != (s.rows, s.cols):
        raise DataError(s.path, f"series {folder.name}: pixel array shape {arr.shape} for Rows={s.rows}, "
                                f"Columns={s.cols}")
    if not np.isfinite(arr).all():
        raise DataError(s.path, f"series {folder.name}: values NaN or Inf after the modality LUT (check "
                                "RescaleSlope / RescaleIntercept)")
    return arr.astype(np.float32)


def read_dicom_series(folder: str | Path, *, max_voxels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """A folder holding one DICOM series (one slice per file) as float32 (D, H, W) in modality units (HU).

    Slices are ordered by Image Position Patient projected on the slice normal (row x column cosines
    of Image Orientation Patient), not by file name or InstanceNumber. Spacing: (median slice step,
    PixelSpacing[0] (between rows), PixelSpacing[1] (between columns)) mm. Refused with a DataError
    naming the series and the slice: mixed SeriesInstanceUIDs, different Rows x Columns, orientation or
    Pixel Spacing, a missing slice (a gap above 1.5x the median step), uneven steps (over 5 % off the
    median), two slices at one position, a sheared stack; Rows x Columns x slices above ``max_voxels``
    before any pixel is decoded; a slice that does not decode."""
    folder = Path(folder)
    files = _series_files(folder)
    slices = [_header(p, folder) for p in files]
    _check_consistent(folder, slices)
    _check_voxels(folder, (len(slices), slices[0].rows, slices[0].cols), max_voxels, "DICOM series (slices x Rows x "
                                                                                      "Columns)")
    ordered, step, normal = _order(folder, slices)
    arr = np.stack([_decode_slice(s, folder) for s in ordered])
    s0 = ordered[0]
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = s0.iop[3:] * s0.ps[0]
    affine[:3, 2] = s0.iop[:3] * s0.ps[1]
    affine[:3, 3] = s0.ipp
    return Volume(arr, (step, float(s0.ps[0]), float(s0.ps[1])), affine, str(folder), s0.window)


def write_dicom_series(folder: str | Path, hu: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                       orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                       origin: Sequence[float] = (0.0, 0.0, 0.0), slope: float = 1.0, intercept: float = -1024.0,
                       window: tuple[float, float] | None = None, series_uid: str | None = None,
                       names: Sequence[str] | None = None, modality: str = "CT") -> list[Path]:
    """Write (D, H, W) values (HU) as one CT series: slice d at ``origin + d * sd * normal``, stored
    ``round((hu - intercept) / slope)`` as uint16 with Rescale Slope / Intercept. ``names``: the file
    name of each slice (default ``slice_000.dcm``...), e.g. shuffled to test the ordering."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    vol = np.asarray(hu, dtype=np.float64)
    stored = np.round((vol - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"values need (hu - intercept) / slope in [0, 65535], got [{stored.min()}, {stored.max()}]")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    names = list(names) if names is not None else [f"slice_{d:03d}.dcm" for d in range(vol.shape[0])]
    out = []
    for d in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names[d]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = modality, "SYNTH", "Synthetic^Volume"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = d + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin, np.float64) + d * float(spacing[0]) * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{float(spacing[1]):.6f}", f"{float(spacing[2]):.6f}"]
        ds.SliceThickness = f"{float(spacing[0]):.6f}"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.PixelData = np.ascontiguousarray(stored[d].astype("<u2")).tobytes()
        ds.save_as(folder / names[d], enforce_file_format=True)
        out.append(folder / names[d])
    return out


def volume_header(path: str | Path, *, max_voxels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Shape (D, H, W) [C first for 4-D NIfTI] and spacing (mm) of a volume from its headers alone, with the
    same checks as reading it (a DICOM series' geometry; the voxel limit); no voxel is decoded."""
    import nibabel as nib

    path = Path(path)
    if path.is_dir():
        slices = [_header(p, path) for p in _series_files(path)]
        _check_consistent(path, slices)
        shape = (len(slices), slices[0].rows, slices[0].cols)
        _check_voxels(path, shape, max_voxels, "DICOM series (slices x Rows x Columns)")
        _, step, _ = _order(path, slices)
        return {"shape": shape, "spacing": (step, float(slices[0].ps[0]), float(slices[0].ps[1]))}
    if not is_nifti(path):
        raise DataError(path, "not a volume: expected a .nii / .nii.gz file or a folder holding one DICOM series")
    _check_path(path)
    try:
        img = nib.load(str(path))
        dims, affine = _nifti_layout(tuple(int(v) for v in img.shape), path), np.asarray(img.affine, np.float64)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"not a readable NIfTI file: {_why(exc)}") from None
    _check_voxels(path, dims, max_voxels, "NIfTI shape")
    shape = dims[2::-1] if len(dims) == 3 else (dims[3], *dims[2::-1])
    return {"shape": tuple(shape), "spacing": tuple(float(np.linalg.norm(affine[:3, a])) for a in (2, 1, 0))}


def read_volume(path: str | Path, *, max_voxels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """A NIfTI file (``.nii`` / ``.nii.gz``) or a DICOM series folder, by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, max_voxels=max_voxels)
    if is_nifti(path):
        return read_nifti(path, max_voxels=max_voxels)
    if not path.exists():
        raise DataError(path, "volume not found")
    raise DataError(path, "not a volume: expected a .nii / .nii.gz file or a folder holding one DICOM series")


# ------------------------------------------------------------------------------------- windows


def resolve_volume_window(window: VolumeWindow) -> tuple[float, float] | str | None:
    """None, "minmax", a name of :data:`VOLUME_WINDOWS` or [center, width] (width >= 1) -> None, "minmax" or a pair."""
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower()
        if key == "minmax":
            return key
        if key not in VOLUME_WINDOWS:
            raise ConfigError(f"window must be minmax, [center, width] or one of {sorted(VOLUME_WINDOWS)}, "
                              f"got {window!r}")
        return VOLUME_WINDOWS[key]
    try:
        c, w = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be a name or [center, width], got {window!r}") from None
    if not (math.isfinite(c) and math.isfinite(w) and w >= 1.0):
        raise ConfigError(f"window [center, width] needs finite numbers and width >= 1, got {window!r}")
    return c, w


def apply_window(values: torch.Tensor, window: tuple[float, float] | str) -> torch.Tensor:
    """Values (any shape, modality units) -> [0, 1]. A (center c, width w) window is DICOM's linear VOI
    function (PS3.3 C.11.2.1.2.1): ``clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)``; "minmax" stretches the
    tensor's own range (a constant tensor gives 0)."""
    x = values.to(torch.float32)
    if window == "minmax":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo) if bool(hi > lo) else torch.zeros_like(x)
    c, w = (float(v) for v in window)
    if w <= 1.0:  # DICOM: a width of 1 is a threshold at c - 0.5
        return (x > c - 0.5).to(torch.float32)
    return ((x - (c - 0.5)) / (w - 1.0) + 0.5).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------- resampling


def _out_grid(n: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float] | None,
              size: Sequence[int] | int | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if new_spacing is None and size is None:
        raise ConfigError("resample: give new_spacing, size or both")
    if isinstance(size, (int, np.integer)):
        size = (int(size),) * 3
    if size is not None and (len(size) != 3 or any(int(m) < 1 for m in size)):
        raise ConfigError(f"resample: size must be a positive int or (D, H, W), got {size!r}")
    if new_spacing is not None and (len(new_spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0
                                                                       for s in new_spacing)):
        raise ConfigError(f"resample: new_spacing must be three positive numbers (mm), got {new_spacing!r}")
    if size is None:
        size = tuple(max(1, round(k * float(s) / float(t))) for k, s, t in zip(n, spacing, new_spacing, strict=True))
    if new_spacing is None:
        new_spacing = tuple(k * float(s) / int(m) for k, s, m in zip(n, spacing, size, strict=True))
    return tuple(int(m) for m in size), tuple(float(t) for t in new_spacing)


def resample(x: torch.Tensor, spacing: Sequence[float], *, new_spacing: Sequence[float] | None = None,
             size: Sequence[int] | int | None = None, mode: str = "trilinear"
             ) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Resample (C, D, H, W) or (B, C, D, H, W) from ``spacing`` (mm) to ``new_spacing`` and / or ``size``.

    Output voxel j of an axis sits at j * s' mm from the first input voxel centre (the origin is kept,
    as SimpleITK's ``Resample`` with the same origin does), i.e. at input index j * s' / s. Without ``size``
    the output has round(n * s / s') voxels per axis; without ``new_spacing`` s' = n * s / m (the extent
    n * s is kept). ``mode``: "trilinear" (images) or "nearest" (masks; a bool tensor comes back bool).
    Positions past the last input centre take the edge value. Returns (tensor, new spacing)."""
    if mode not in ("trilinear", "nearest"):
        raise ConfigError(f"resample: mode must be 'trilinear' or 'nearest', got {mode!r}")
    if x.ndim not in (4, 5):
        raise ConfigError(f"resample: need (C, D, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")
    n = tuple(int(k) for k in x.shape[-3:])
    size, new_spacing = _out_grid(n, spacing, new_spacing, size)
    is_bool = x.dtype == torch.bool
    v = x[None] if x.ndim == 4 else x
    v = v.to(torch.float32) if is_bool or not v.is_floating_point() else v
    axes = []
    for k, s, t, m in zip(n, spacing, new_spacing, size, strict=True):
        u = torch.arange(m, dtype=torch.float64, device=v.device) * (float(t) / float(s))
        axes.append((2.0 * u / (k - 1) - 1.0 if k > 1 else torch.zeros_like(u)).to(v.dtype))
    gd, gh, gw = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gw, gh, gd], dim=-1)[None].expand(v.shape[0], *size, 3)
    out = torch.nn.functional.grid_sample(v, grid, mode="bilinear" if mode == "trilinear" else "nearest",
                                          padding_mode="border", align_corners=True)
    if is_bool:
        out = out > 0.5
    return (out[0] if x.ndim == 4 else out), new_spacing  # type: ignore[return-value]


# ------------------------------------------------------------------------------- loading items


def load_volume(path: str | Path, *, window: VolumeWindow = None, max_voxels: int = DEFAULT_MAX_PIXELS
                ) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """A volume as float32 (C, D, H, W) in [0, 1] and its spacing (mm). ``window``: a name of
    :data:`VOLUME_WINDOWS`, [center, width], "minmax", or None: the file's own window (DICOM Window
    Center / Width of the first slice) if it has one, else "minmax"."""
    vol = read_volume(path, max_voxels=max_voxels)
    win = resolve_volume_window(window)
    if win is None:
        win = vol.window if vol.window is not None and vol.window[1] >= 1 else "minmax"
    t = torch.from_numpy(vol.array)
    return apply_window(t[None] if t.ndim == 3 else t, win), vol.spacing


def load_volume_mask(path: str | Path, *, max_voxels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """A 3-D mask (NIfTI, or a DICOM series of labels) as bool (1, D, H, W): any non-zero voxel (any
    channel) is True. DICOM SEG objects are not read."""
    vol = read_volume(path, max_voxels=max_voxels)
    arr = vol.array if vol.array.ndim == 3 else np.abs(vol.array).max(axis=0)
    return torch.from_numpy(arr != 0)[None]


# ------------------------------------------------------------------------------------ layouts

#: Columns a volume CSV's path may be in (first found), and its mask column.
PATH_COLUMNS = ("path", "volume", "image", "series")
MASK_COLUMN = "mask"


@dataclass
class VolumeRecord:
    """One volume: absolute ``path`` (a NIfTI file or a series folder), ``id`` (path relative to the root,
    without .nii / .nii.gz), label, split, ``masks`` {item key: absolute path or None}, ``groups``."""

    path: Path
    rel: str
    id: str
    label: Any
    split: str | None
    masks: dict[str, Path | None]
    groups: dict[str, str]
    row: int | None = None


def _strip_nifti(rel: str) -> str:
    low = rel.lower()
    for suf in (".nii.gz", ".nii"):
        if low.endswith(suf):
            return rel[: -len(suf)]
    return rel


def _volume_problem(path: Path) -> str | None:
    if path.is_dir():
        return None
    if not path.exists():
        return "volume not found"
    if not is_nifti(path):
        return "not a volume (expected a .nii / .nii.gz file or a DICOM series folder)"
    return "empty file (0 bytes)" if path.stat().st_size == 0 else None


def _resolve_rel(root: Path, value: str, spec: Any, col: Any, where: str) -> tuple[Path, str] | None:
    from medxai.data.layouts import _locate

    value = value.replace("\\", "/")
    cand = Path(value) if Path(value).is_absolute() else root / value
    loc = _locate(root.resolve(), cand, spec.allow_outside_root)
    if isinstance(loc, str):
        col.bad(cand, f"{loc} ({where})")
        return None
    problem = _volume_problem(loc[0])
    if problem:
        col.bad(cand, f"{problem} ({where})")
        return None
    return loc


def volume_table(spec: Any, root: Path, split: str | None, on_error: str) -> Any:
    """A volume CSV (``spec.csv``: path, label[, mask][, split][, NAME_mask ...]) -> a record table.
    Paths are relative to the root (NIfTI files or DICOM series folders); a blank mask cell means no
    annotation. Without a split column, ``val_fraction`` / ``test_fraction`` split by a hash of the path."""
    from medxai.data.layouts import (
        Table,
        _Collector,
        _default_task,
        _found_classes,
        _group_values,
        _label_index,
        _pick,
        _row_groups,
        read_csv,
        row_split,
    )

    col = _Collector(on_error)
    path = root / spec.csv
    df = read_csv(path)
    pcol = _pick(df, path, spec.image_column, PATH_COLUMNS, "image")
    lcol = _pick(df, path, spec.label_column, ("label", "labels", "class", "target", "diagnosis"), "label")
    mcol = spec.mask_column or (MASK_COLUMN if MASK_COLUMN in df.columns else None)
    extra = {c: c for c in df.columns if c.endswith("_mask") and c != mcol}
    masks_cols = ({"mask": mcol} if mcol else {}) | extra
    scol = spec.split_column or ("split" if "split" in df.columns else None)
    gvals = _group_values(df, path, spec)
    labels = [str(v).strip() for v in df[lcol].tolist()]
    classes = list(spec.classes) if spec.classes else _found_classes(labels)
    records: list[VolumeRecord] = []
    for i in range(len(df)):
        row = f"row {i + 2}"
        where = f"listed in {path.name} {row}"
        value, lab = str(df[pcol].iat[i]).strip(), labels[i]
        idx = _label_index(lab, classes)
        if value == "" or idx is None:
            col.bad(path, f"{row}: " + (f"empty value in column '{pcol}'" if value == "" else
                                        f"column '{lcol}': label '{lab}' is not in the class list {classes}"))
            continue
        keep, rsplit = row_split(df, scol, i, path, row, split, col)
        if not keep:
            continue
        rgroups = _row_groups(gvals, i, path, row, spec, col)
        loc = _resolve_rel(root, value, spec, col, where) if rgroups is not None else None
        if loc is None:
            continue
        masks: dict[str, Path | None] = {}
        for key, c in masks_cols.items():
            mv = str(df[c].iat[i]).strip()
            mloc = _resolve_rel(root, mv, spec, col, f"{where}, column '{c}'") if mv else None
            if mv and mloc is None:
                break
            masks[key] = mloc[0] if mloc else None
        else:
            rid = _strip_nifti(value.replace("\\", "/").rstrip("/"))
            records.append(VolumeRecord(loc[0], loc[1], rid, idx, rsplit, masks, rgroups or {}, i + 2))
    records = _split_records(records, spec, split, path, scol)
    return Table(layout="volumes", root=root, source=path, records=records, class_names=classes,
                 task=spec.task or _default_task(classes), skipped=col.skipped)


def _split_records(records: list, spec: Any, split: str | None, where: Path, scol: str | None) -> list:
    from medxai.data.layouts import _fraction_splits

    if scol is not None:
        return records
    return _fraction_splits(records, spec, split, where)


def volume_folder_table(spec: Any, root: Path, split: str | None, on_error: str) -> Any:
    """``root/[{train,val,test}/]CLASS/<case>`` with a case a .nii / .nii.gz file or a DICOM series folder;
    masks mirror the paths under ``mask_dir`` as ``<mask_dir>/<id>.nii.gz`` (or ``.nii``)."""
    from medxai.data.layouts import SPLIT_ALIASES, Table, _children, _Collector, _default_task, _label_index

    col = _Collector(on_error)
    skip = {spec.mask_dir, *spec.extra_mask_dirs.values()}
    tops = [p for p in _children(root) if p.is_dir() and p.name not in skip]
    with_splits = any(p.name.lower() in SPLIT_ALIASES for p in tops)
    groups = [(SPLIT_ALIASES[p.name.lower()], p) for p in tops if p.name.lower() in SPLIT_ALIASES] \
        if with_splits else [(None, root)]
    class_dirs = [(s, c) for s, d in groups for c in _children(d) if c.is_dir() and c.name not in skip]
    classes = list(spec.classes) if spec.classes else sorted({c.name for _, c in class_dirs})
    mask_dirs = ({"mask": root / spec.mask_dir} if spec.mask_dir else {}) | {
        f"{n}_mask": root / d for n, d in spec.extra_mask_dirs.items()}
    records: list[VolumeRecord] = []
    for s, cdir in class_dirs:
        label = _label_index(cdir.name, classes)
        if label is None:
            if spec.other_classes == "drop":
                continue
            raise DataError(cdir, f"class folder '{cdir.name}' is not in the class list {classes}")
        if split is not None and with_splits and s != split:
            continue
        for case in _children(cdir):
            loc = _resolve_rel(root, str(case.relative_to(root)), spec, col, "volume folder layout")
            if loc is None:
                continue
            rid = _strip_nifti(case.relative_to(root).as_posix())
            masks = {k: next((f for f in (d / f"{rid}.nii.gz", d / f"{rid}.nii") if f.is_file()), None)
                     for k, d in mask_dirs.items()}
            records.append(VolumeRecord(loc[0], loc[1], rid, label, s, masks, {}))
    if not with_splits:
        records = _split_records(records, spec, split, root, None)
    return Table(layout="volumes", root=root, source=root, records=records, class_names=classes,
                 task=spec.task or _default_task(classes), skipped=col.skipped)


# ------------------------------------------------------------------------------------ datasets

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def _volume_size(size: Any) -> tuple[int, int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size),) * 3
    if len(size) != 3 or any(int(m) < 1 for m in size):
        raise ConfigError(f"volume size must be a positive int or [D, H, W], got {size!r}")
    return tuple(int(m) for m in size)  # type: ignore[return-value]


def _resample_item(item: dict[str, Any], spacing: tuple[float, ...], new_spacing: Any, size: Any) -> None:
    """Resample ``image`` (trilinear) and every ``*mask`` (nearest) of an item onto one grid, in place."""
    if new_spacing is None and size is None:
        item["spacing"] = torch.tensor(spacing, dtype=torch.float64)
        return
    img, ns = resample(item["image"], spacing, new_spacing=new_spacing, size=size)
    for k in [k for k in item if k.endswith("mask") and isinstance(item[k], torch.Tensor) and item[k].ndim == 4]:
        item[k] = resample(item[k], spacing, new_spacing=ns, size=tuple(img.shape[-3:]), mode="nearest")[0]
    item["image"] = img
    item["spacing"] = torch.tensor(ns, dtype=torch.float64)


class VolumeDataset(RecordViews, Dataset):
    """Volume records (a volume CSV or folder layout), decoded at ``__getitem__``.

    Items: ``image`` float32 (C, D, H, W) in [0, 1] (``window``), ``label`` int64 scalar, ``id`` (the
    path relative to the root, without .nii / .nii.gz), ``path``, ``spacing`` float64 (3,) mm (sd, sh, sw)
    after resampling; with a mask column ``mask`` bool (1, D, H, W) and ``has_mask``; ``NAME_mask`` bool
    (1, D, H, W) for each further ``NAME_mask`` column. ``spacing`` (spec) resamples to that voxel spacing,
    ``volume_size`` to that grid (both: that grid at that spacing); images trilinear, masks nearest.
    A bad volume raises a DataError naming it (never replaced); :meth:`validate` drops them in skip mode.
    """

    def __init__(self, table: Any, spec: Any, *, size: Any = None, transform: Transform | None = None,
                 on_error: str = "raise") -> None:
        self.table, self.spec = table, spec
        self.records: list[VolumeRecord] = list(table.records)
        self.class_names, self.task = list(table.class_names), table.task
        self.layout, self.root = "volumes", table.root
        self.skipped: list[tuple[str, str]] = list(table.skipped)
        self.notes: list[str] = list(table.notes)
        self.split_source = None
        self.on_error, self.transform = on_error, transform
        self.window = resolve_volume_window(spec.window)
        self.new_spacing = None if spec.spacing is None else tuple(float(s) for s in spec.spacing)
        self.volume_size = _volume_size(size if size is not None else spec.volume_size)
        keys = {k for r in self.records for k in r.masks}
        self.mask_keys = sorted(keys)
        self.has_masks = "mask" in keys
        self.mask_channels = 1
        self.extra_mask_names = [k[: -len("_mask")] for k in self.mask_keys if k != "mask"]
        if spec.task == "multilabel":
            raise ConfigError("volumes: multilabel volume datasets are not supported")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([r.label for r in self.records], dtype=np.int64).reshape(len(self.records))

    def __repr__(self) -> str:
        return f"VolumeDataset(n={len(self)}, task={self.task!r}, classes={self.class_names})"

    def _mask(self, path: Path | None, shape: tuple[int, ...]) -> torch.Tensor:
        if path is None:
            return torch.zeros((1, *shape), dtype=torch.bool)
        m = load_volume_mask(path, max_voxels=self.spec.max_pixels)
        if tuple(m.shape[-3:]) != shape:
            raise DataError(path, f"mask shape {tuple(m.shape[-3:])} (D, H, W) differs from the volume's {shape}")
        return m

    def load(self, index: int) -> dict[str, Any]:
        """Decode item ``index`` (a DataError on a bad volume or mask, naming it)."""
        rec = self.records[index]
        img, spacing = load_volume(rec.path, window=self.window, max_voxels=self.spec.max_pixels)
        if self.spec.channels == 3 and img.shape[0] == 1:
            img = img.expand(3, -1, -1, -1).contiguous()
        shape = tuple(img.shape[-3:])
        item: dict[str, Any] = {"image": img, "label": torch.tensor(int(rec.label), dtype=torch.int64),
                                "id": rec.id, "path": str(rec.path)}
        if self.spec.groups:
            item["groups"] = dict(rec.groups)
        for key in self.mask_keys:
            p = rec.masks.get(key)
            item[key] = self._mask(p, shape)
            if key == "mask":
                item["has_mask"] = torch.tensor(p is not None)
        _resample_item(item, spacing, self.new_spacing, self.volume_size)
        return self.transform(item) if self.transform is not None else item

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        return self.load(index % n)

    def validate(self, on_item: Callable[[Any, dict[str, Any]], None] | None = None) -> list[tuple[str, str]]:
        """Decode every item once; in skip mode drop the bad ones (listed in ``skipped``), else raise."""
        return validate_records(self, on_item)


def open_volumes(spec: Any, root: Path, split: str | None, *, size: Any = None, transform: Transform | None = None,
                 on_error: str = "raise") -> VolumeDataset:
    """The ``volumes`` layout of :func:`medxai.data.open_dataset`: a volume CSV (``csv``) or a folder layout."""
    table = (volume_table if spec.csv else volume_folder_table)(spec, root, split, on_error)
    seen: dict[str, VolumeRecord] = {}
    for r in table.records:
        other = seen.setdefault(r.id, r)
        if other is not r:
            raise DataError(r.path, f"id '{r.id}' is also the id of {other.path}: ids must be unique")
    return VolumeDataset(table, spec, size=size, transform=transform, on_error=on_error)


# --------------------------------------------------------------------------- synthetic volumes


class SyntheticVolumeDataset(Dataset):
    """A synthetic volume study (``ct-nodule``) rendered lazily, one :func:`generate_volume` per item.

    Items are those of :class:`VolumeDataset` on the written study: ``image`` float32 (1, D, H, W) (the
    study's window of the int16 HU), ``label``, ``mask`` bool (1, D, H, W) with ``has_mask`` True,
    ``shortcut_mask`` (1, D, H, W) when a shortcut is requested, ``spacing``, ``id``, ``path``.
    ``spacing=`` / ``volume_size=`` resample as :class:`VolumeDataset` does.
    """

    def __init__(self, study: str, n: int, size: int = 32, seed: int = 0, split: str = "train",
                 shortcut: float | None = None, *, transform: Transform | None = None,
                 spacing: Sequence[float] | None = None, volume_size: Any = None, **options: Any) -> None:
        from medxai.data.layouts import canonical_split
        from medxai.data.synthetic.ct import check_volume_args, resolve_volume_options

        split = canonical_split(split) or "train"
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"n must be a non-negative integer, got {n!r}")
        spec = check_volume_args(study, size, seed, split, shortcut)
        resolve_volume_options(spec, options)
        self.study, self.n, self.img_size, self.seed, self.split = study, int(n), int(size), int(seed), split
        self.shortcut, self.options, self.transform = shortcut, dict(options), transform
        self.class_names, self.task = list(spec.class_names), spec.task
        self.layout, self.root, self.skipped, self.has_masks = "synthetic", None, [], True
        self.new_spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.volume_size = _volume_size(volume_size)

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> list[str]:
        return [f"{self.study}-{self.split}-{i:06d}" for i in range(self.n)]

    @property
    def labels(self) -> np.ndarray:
        """Labels from the seeds alone (no rendering)."""
        from medxai.data.synthetic.ct import volume_label

        return np.asarray([volume_label(self.study, i, self.img_size, self.seed, self.split, **self.options)
                           for i in range(self.n)], dtype=np.int64).reshape(self.n)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from medxai.data.synthetic.ct import generate_volume

        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        index %= self.n
        one = generate_volume(self.study, index, self.img_size, self.seed, self.split, self.shortcut, **self.options)
        item: dict[str, Any] = {"image": torch.from_numpy(one["image"]),
                                "label": torch.tensor(one["label"], dtype=torch.int64), "id": one["id"],
                                "path": f"synthetic://{self.study}/{self.split}/{index}",
                                "mask": torch.from_numpy(one["mask"])[None], "has_mask": torch.tensor(True)}
        if self.shortcut is not None:
            item["shortcut_mask"] = torch.from_numpy(one["shortcut_mask"])[None]
        _resample_item(item, one["spacing"], self.new_spacing, self.volume_size)
        return self.transform(item) if self.transform is not None else item


# ------------------------------------------------------------------------------- writing studies

VOLUME_CSV = "volumes.csv"


def _write_case(out: Path, split: str, one: dict[str, Any], fmt: str, shortcut: bool,
                class_names: Sequence[str]) -> dict[str, str]:
    """One volume (NIfTI int16 HU, or a DICOM series) and its masks (NIfTI uint8); returns its CSV row."""
    ident = one["id"]
    if fmt == "dicom":
        rel = f"{split}/{ident}"
        win = VOLUME_WINDOWS[one["window"]]
        write_dicom_series(out / rel, one["hu"].astype(np.float64), one["spacing"], window=win)
    else:
        rel = f"{split}/{ident}.nii.gz"
        write_nifti(out / rel, one["hu"], one["spacing"], dtype=np.int16)
    row = {"path": rel, "label": class_names[int(one["label"])], "split": split,
           "mask": f"masks/{split}/{ident}.nii.gz"}
    write_nifti(out / row["mask"], one["mask"].astype(np.uint8), one["spacing"], dtype=np.uint8)
    if shortcut:
        row["shortcut_mask"] = f"shortcut_masks/{split}/{ident}.nii.gz"
        write_nifti(out / row["shortcut_mask"], one["shortcut_mask"].astype(np.uint8), one["spacing"],
                    dtype=np.uint8)
    return row


def _prepare_out(out: Path, overwrite: bool) -> None:
    import shutil

    from medxai.data.layouts import MANIFEST

    if out.exists() and not out.is_dir():
        raise DataError(out, "output path exists and is not a folder")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        if not (out / MANIFEST).is_file():
            raise DataError(out, "output folder is not empty and holds no medxai dataset; choose another")
        if not overwrite:
            raise DataError(out, "already holds a dataset; use overwrite (--overwrite) or another folder")
        for name in ("train", "val", "test", "masks", "shortcut_masks"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in (VOLUME_CSV, MANIFEST):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic_volumes(study: str, out_dir: str | Path, n: dict[str, int], *, size: int = 32, seed: int = 0,
                            shortcut: float | None = None, fmt: str = "nifti", overwrite: bool = False,
                            progress: Callable[[str, int], Callable[[int], None]] | None = None,
                            **options: Any) -> Path:
    """Render and write a synthetic volume study: ``<split>/<id>.nii.gz`` (int16 HU; ``fmt="dicom"``: a
    series folder ``<split>/<id>/slice_NNN.dcm``), masks ``masks/<split>/<id>.nii.gz`` (and
    ``shortcut_masks/...``), the index ``volumes.csv`` (path, label, split, mask[, shortcut_mask]) and a
    ``medxai.json`` manifest whose spec (layout ``volumes``, the study's window) ``open_dataset`` reads.
    ``n``: volumes per split. Returns the manifest path. The CSV and manifest are written last, atomically."""
    from medxai._util.io import atomic_write_json, atomic_write_text
    from medxai.data.layouts import MANIFEST
    from medxai.data.synthetic.ct import check_volume_args, generate_volume, resolve_volume_options
    from medxai.data.write import _csv_text

    if fmt not in ("nifti", "dicom"):
        raise ConfigError(f"format must be 'nifti' or 'dicom', got {fmt!r}")
    spec = None
    for split in n:
        spec = check_volume_args(study, size, seed, split, shortcut)
    spec = spec or check_volume_args(study, size, seed, "train", shortcut)
    resolved = resolve_volume_options(spec, options)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    rows: list[dict[str, str]] = []
    for split, count in n.items():
        cb = progress(split, count) if progress is not None else None
        for i in range(count):
            one = generate_volume(study, i, size, seed, split, shortcut, **options)
            rows.append(_write_case(out, split, one, fmt, shortcut is not None, spec.class_names))
            if cb is not None:
                cb(1)
    header = ["path", "label", "split", "mask"] + (["shortcut_mask"] if shortcut is not None else [])
    atomic_write_text(out / VOLUME_CSV, _csv_text(header, rows))
    manifest = {"format": "medxai-dataset", "version": 1, "study": study, "seed": int(seed), "size": int(size),
                "shortcut": None if shortcut is None else float(shortcut), "options": resolved, "task": spec.task,
                "class_names": list(spec.class_names), "channels": spec.channels, "layout": "volumes",
                "volume_format": fmt, "splits": {s: int(c) for s, c in n.items()},
                "spec": {"layout": "volumes", "csv": VOLUME_CSV, "window": spec.window, "task": spec.task,
                         "classes": list(spec.class_names)}}
    atomic_write_json(out / MANIFEST, manifest)
    return out / MANIFEST
