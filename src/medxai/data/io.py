"""Reading images from disk: PNG / JPEG / TIFF (8 and 16 bit) through Pillow, DICOM through pydicom.

Every image comes back as float32 (H, W, C) in [0, 1]. Every failure (missing, empty, truncated,
undecodable, too large, no pixel data) is a :class:`medxai.errors.DataError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medxai.errors import DataError

#: Refuse images with more pixels than this (decompression bombs, absurd DICOM Rows x Columns).
DEFAULT_MAX_PIXELS = 100_000_000

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
#: ITU-R 601-2 luma weights, the ones Pillow's "L" conversion uses.
LUMA = (0.299, 0.587, 0.114)
#: Named DICOM windows (center, width) in the modality LUT's units (Hounsfield units for CT).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "brain": (40.0, 80.0), "bone": (400.0, 1800.0),
    "abdomen": (40.0, 400.0), "soft_tissue": (50.0, 350.0)}

Window = tuple[float, float] | list[float] | str | None
Bits = int | str | None

__all__ = ["DEFAULT_MAX_PIXELS", "WINDOW_PRESETS", "is_dicom", "load_image", "load_mask", "png_significant_bits",
           "resolve_window", "save_png"]


def _why(exc: BaseException) -> str:
    """An exception as one line (library messages can span lines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(path, f"cannot stat file: {_why(exc)}") from None
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")


def is_dicom(path: str | Path) -> bool:
    """True for a DICOM suffix or the ``DICM`` magic at byte 128 (Part 10 files)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_image(path: str | Path, channels: int | None = None, *, frame: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, window: Window = None, bits: Bits = None) -> np.ndarray:
    """Read an image file as float32 (H, W, C) in [0, 1].

    - PNG / JPEG / TIFF / BMP / GIF through Pillow: 8-bit values / 255, 16-bit values / 65535,
      palette expanded to RGB, alpha dropped, EXIF orientation applied (``ImageOps.exif_transpose``).
      Pillow keeps 16-bit precision for grayscale only; 16-bit colour PNG/TIFF is read at 8 bits.
    - DICOM through pydicom: modality LUT (RescaleSlope / Intercept or Modality LUT Sequence), then
      VOI LUT Sequence or Window Center / Width (``window=(center, width)`` overrides, a preset name of
      :data:`WINDOW_PRESETS` too, ``window="minmax"`` stretches each image's own range), MONOCHROME1
      inverted. Without a VOI the full output range of the modality LUT (from BitsStored, or ``bits``)
      maps to [0, 1]. Multi-frame files (and multi-page TIFF / GIF) are refused unless ``frame`` is given.
    - ``bits``: None divides by the container's maximum (255, 65535); an int ``b`` divides by
      ``2**b - 1`` (a value above it is a DataError); "auto" uses the PNG sBIT chunk (DICOM: BitsStored),
      8-bit files without one are read at 8 bits, 16-bit files without one are refused.
    - ``channels``: None keeps the file's (1 or 3); 1 converts RGB to luma (ITU-R 601-2);
      3 repeats grayscale.
    - ``max_pixels``: width x height x frames above it is refused before decoding.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise DataError(path, f"channels must be None, 1 or 3, got {channels!r}")
    if bits is not None and bits != "auto" and (isinstance(bits, bool) or not isinstance(bits, int)
                                                 or not 1 <= bits <= 16):
        raise DataError(path, f"bits must be None, 'auto' or an integer in [1, 16], got {bits!r}")
    _check_file(path)
    if is_dicom(path):
        img = _load_dicom(path, frame=frame, max_pixels=max_pixels, window=resolve_window(window, path), bits=bits)
    else:
        if window is not None:
            raise DataError(path, "window= applies to DICOM files only")
        img = _load_pil(path, frame=frame, max_pixels=max_pixels, bits=bits)
    return to_channels(img, channels)


def resolve_window(window: Window, path: str | Path | None = None) -> tuple[float, float] | str | None:
    """None, "minmax", a preset name (:data:`WINDOW_PRESETS`) or (center, width) -> None, "minmax" or a pair."""
    if window is None or window == "minmax":
        return window
    if isinstance(window, str):
        key = window.strip().lower()
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        raise DataError(path, f"window must be (center, width), 'minmax' or one of {sorted(WINDOW_PRESETS)}, "
                              f"got {window!r}")
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise DataError(path, f"window must be (center, width), 'minmax' or a preset name, got {window!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise DataError(path, f"window (center, width) needs finite numbers and width > 0, got {window!r}")
    return center, width


def png_significant_bits(path: str | Path) -> int | None:
    """The largest significant-bit count of a PNG's sBIT chunk (read before IDAT), None without one."""
    import struct

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(1000):
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, ctype = struct.unpack(">I4s", head)
                if ctype in (b"IDAT", b"IEND"):
                    return None
                if ctype == b"sBIT":
                    data = fh.read(length)
                    return max(data) if data and len(data) == length else None
                fh.seek(length + 4, 1)
    except OSError:
        return None
    return None


def to_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """(H, W, C) float: C=3 -> 1 by ITU-R 601-2 luma; C=1 -> 3 by repetition; None unchanged."""
    if channels is None or img.shape[-1] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=-1)
    w = np.asarray(LUMA, dtype=np.float32)
    return np.clip((img[..., :3] @ w)[..., None], 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ Pillow


def _load_pil(path: Path, *, frame: int | None, max_pixels: int, bits: Bits = None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # DecompressionBombWarning, corrupt-EXIF and TIFF-tag warnings
            warnings.simplefilter("ignore")
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"refused: {_why(exc)}") from None
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise DataError(path, f"cannot open image: {_why(exc)}") from None
    try:
        with im:
            w, h = im.size
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if w <= 0 or h <= 0:
                raise DataError(path, f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise DataError(path, f"refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            if n_frames > 1:
                if frame is None:
                    raise DataError(path, f"multi-frame image ({n_frames} frames): choose one with frame=")
                if not 0 <= frame < n_frames:
                    raise DataError(path, f"frame {frame} out of range (the file has {n_frames} frames)")
                im.seek(frame)
            elif frame not in (None, 0):
                raise DataError(path, f"frame {frame} out of range (the file has 1 frame)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _pil_to_float(im, path, _pil_bits(im, path, bits))
    except DataError:
        raise
    except Exception as exc:  # truncated data, decoder errors, ...
        if isinstance(exc, (OSError, SyntaxError, EOFError)):
            raise DataError(path, f"truncated or corrupt image data: {_why(exc)}") from None
        raise DataError(path, f"cannot decode image: {_why(exc)}") from None


def _container_bits(mode: str) -> int:
    return 16 if mode.startswith("I") else 1 if mode == "1" else 32 if mode == "F" else 8


def _pil_bits(im: Any, path: Path, bits: Bits) -> int | None:
    """The significant bits to divide by (None: the container's maximum), checked against the container."""
    depth = _container_bits(im.mode)
    if bits is None or depth in (1, 32):
        return None
    if bits == "auto":
        sbit = png_significant_bits(path)  # None for files other than PNG
        if sbit is None:
            if depth == 8:
                return 8
            raise DataError(path, f"bits: auto, but the {depth}-bit file records no significant bits (no PNG sBIT "
                                  "chunk); set bits: 12 or bits: 16")
        bits = sbit
    if int(bits) > depth:
        raise DataError(path, f"bits: {bits} but the image is stored at {depth} bits per sample")
    return int(bits)


def _scale(arr: np.ndarray, bits: int | None, default: float, path: Path) -> np.ndarray:
    """Integer samples over ``2**bits - 1`` (None: ``default``); a sample above the maximum is a DataError."""
    top = default if bits is None else float(2**bits - 1)
    if bits is not None and arr.size and float(arr.max()) > top:
        raise DataError(path, f"value {int(arr.max())} exceeds the {bits}-bit maximum {int(top)} (bits: {bits}); "
                              "check the bits setting")
    return arr.astype(np.float32) / top


def _pil_to_float(im: Any, path: Path, bits: int | None = None) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("PA",):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        im = im.convert("RGB")
        mode = "RGB"
    if mode == "1":
        arr = np.asarray(im, dtype=np.float32)
        return arr[..., None]
    if mode in ("L", "LA"):
        arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr[..., 0]
        return _scale(arr, bits, 255.0, path)[..., None]
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(im)[..., :3]
        return _scale(arr, bits, 255.0, path)
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
        return _scale(arr, bits, 65535.0, path)[..., None]
    if mode == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise DataError(path, f"32-bit integer image with values [{lo}, {hi}] outside the 16-bit range")
        return _scale(arr, bits, 65535.0, path)[..., None]
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise DataError(path, "floating-point image with values outside [0, 1] (or NaN/Inf): "
                                  "rescale it explicitly before use")
        return arr[..., None]
    raise DataError(path, f"unsupported image mode {mode!r}")


# ------------------------------------------------------------------------------------- DICOM


def _dicom_bits(ds: Any, bits: Bits) -> int:
    """BitsStored (None, "auto") or the caller's ``bits``."""
    if isinstance(bits, int) and not isinstance(bits, bool):
        return bits
    return int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)


def _output_range(ds: Any, bits: Bits = None) -> tuple[float, float]:
    """The range of the modality-LUT output, by the rule pydicom's ``apply_windowing`` uses."""
    bits = _dicom_bits(ds, bits)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        return y_min, y_max
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _load_dicom(path: Path, *, frame: int | None, max_pixels: int, window: tuple[float, float] | str | None,
                bits: Bits = None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, defer_size="256 KB")
            except InvalidDicomError:
                ds = pydicom.dcmread(path, defer_size="256 KB", force=True)
    except Exception as exc:
        raise DataError(path, f"not a readable DICOM file: {_why(exc)}") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(path, "DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    except Exception as exc:
        raise DataError(path, f"DICOM image attributes missing or invalid: {_why(exc)}") from None
    if rows <= 0 or cols <= 0:
        raise DataError(path, f"DICOM image has no pixels (Rows={rows}, Columns={cols})")
    if rows * cols * n_frames > max_pixels:
        raise DataError(path, f"refused: Rows x Columns x frames = {rows}x{cols}x{n_frames} exceeds the limit "
                              f"of {max_pixels} pixels")
    if n_frames > 1 and frame is None:
        raise DataError(path, f"multi-frame DICOM ({n_frames} frames): choose one with frame=")
    if frame is not None and not 0 <= frame < n_frames:
        raise DataError(path, f"frame {frame} out of range (the file has {n_frames} frame(s))")
    try:
        from pydicom.pixels import apply_color_lut, pixel_array

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=frame if n_frames > 1 else None)
            _check_stored(arr, ds, bits, path)
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
                depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
                out = arr.astype(np.float64) / float(2 ** (16 if depth > 8 else 8) - 1)
            elif photometric in ("MONOCHROME1", "MONOCHROME2"):
                out = _grayscale(arr, ds, window, path, bits)
                if photometric == "MONOCHROME1":
                    out = 1.0 - out
            else:  # RGB, and YBR_* already converted to RGB by pixel_array
                depth = bits if isinstance(bits, int) else int(ds.get("BitsStored", 8) or 8)
                out = arr.astype(np.float64) / float(2**depth - 1)
    except DataError:
        raise
    except Exception as exc:  # truncated pixel data, missing decoder, bad LUT, ...
        raise DataError(path, f"cannot decode DICOM pixel data: {_why(exc)}") from None
    if not np.isfinite(out).all():  # e.g. RescaleSlope / Window Width NaN or Inf in the header
        raise DataError(path, "DICOM pixel values are NaN or Inf after the modality / VOI transform (check "
                              "RescaleSlope, RescaleIntercept, WindowCenter, WindowWidth)")
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if out.ndim == 2:
        out = out[..., None]
    if out.ndim != 3 or out.shape[:2] != (rows, cols):
        raise DataError(path, f"unexpected DICOM pixel array shape {out.shape} for Rows={rows}, Columns={cols}")
    return out


def _check_stored(arr: np.ndarray, ds: Any, bits: Bits, path: Path) -> None:
    """With ``bits`` given, stored unsigned samples above ``2**bits - 1`` are a DataError."""
    if isinstance(bits, int) and int(ds.get("PixelRepresentation", 0) or 0) == 0 and arr.size:
        if float(arr.max()) > 2**bits - 1:
            raise DataError(path, f"stored value {int(arr.max())} exceeds the {bits}-bit maximum {2**bits - 1} "
                                  f"(bits: {bits}; the file says BitsStored={ds.get('BitsStored')})")


def _grayscale(arr: np.ndarray, ds: Any, window: tuple[float, float] | str | None, path: Path,
               bits: Bits = None) -> np.ndarray:
    """Modality LUT then VOI (LUT or window) to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window == "minmax":
        lo, hi = float(values.min()), float(values.max())
        return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if window is not None:
        center, width = (float(v) for v in window)
        if "VOILUTSequence" in ds:
            del ds.VOILUTSequence
        ds.WindowCenter, ds.WindowWidth = center, width
    has_lut = bool(ds.get("VOILUTSequence")) and None not in (
        ds.VOILUTSequence[0].get("LUTDescriptor"), ds.VOILUTSequence[0].get("LUTData"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        return _voi_lut(values, ds)
    lo, hi = _output_range(ds, bits)
    if has_window:
        values = apply_voi_lut(values, ds, prefer_lut=False)
    if hi <= lo:
        raise DataError(path, f"degenerate DICOM output range [{lo}, {hi}]")
    return (values - lo) / (hi - lo)


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray:
    """VOI LUT Sequence (PS3.3 C.11.2.1.1): input below the first mapped value takes the first
    entry, above the last the last; entries of ``bits`` bits (descriptor's third value) over
    ``2**bits - 1``. Written out because pydicom's ``apply_voi`` indexes in the LUT's own dtype,
    which wraps around for 8-bit LUTs with more than 256 entries."""
    item = ds.VOILUTSequence[0]
    n, first, bits = (int(v) for v in item.LUTDescriptor)
    n = n or 2**16
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):
        little = getattr(ds, "original_encoding", (None, True))[1]
        lut = np.frombuffer(elem.value, dtype="<u2" if little in (None, True) else ">u2")[:n]
    else:
        lut = np.asarray(elem.value if isinstance(elem.value, (list, tuple)) else list(elem.value), dtype=np.int64)
    if len(lut) < n:
        raise ValueError(f"VOI LUT Data has {len(lut)} entries, its descriptor says {n}")
    idx = np.clip(np.round(values).astype(np.int64) - first, 0, n - 1)
    return lut[idx].astype(np.float64) / float(2**bits - 1)


# --------------------------------------------------------------------------------- masks, PNG


def load_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask image as bool (H, W): any non-zero pixel (any channel) is True."""
    img = load_image(path, max_pixels=max_pixels)
    return img.max(axis=-1) > 0


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Atomically write uint8 (H, W), (H, W, 1), (H, W, 3) or bool (H, W) (as 0 / 255) as a PNG."""
    from PIL import Image

    from medxai._util.io import atomic_write

    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"save_png needs uint8 or bool, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    im = Image.fromarray(np.ascontiguousarray(arr))
    return atomic_write(path, lambda p: im.save(p, format="PNG", compress_level=1))
