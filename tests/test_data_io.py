"""load_image on real files no one here wrote (scikit-image, pydicom test data) and on files written
here with known values; every bad file is a DataError naming it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from medxai.data import load_image, load_mask
from medxai.data.io import save_png
from medxai.errors import DataError

SKIMAGE_DATA = Path(__import__("skimage.data", fromlist=["x"]).__file__).parent
RETINA = SKIMAGE_DATA / "retina.jpg"
MICRO = SKIMAGE_DATA / "microaneurysms.png"
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
DICOM_DIR = CT.parent


def _linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), output range [0, 1], written out here."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    return np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))


# ------------------------------------------------------------------------------- real files


def test_retina_jpg_matches_an_independent_decode() -> None:
    import imageio.v3 as iio

    x = load_image(RETINA)
    ref = iio.imread(RETINA).astype(np.float32) / 255.0
    assert x.dtype == np.float32 and x.shape == (1411, 1411, 3)
    np.testing.assert_array_equal(x, ref)
    # the fundus field is bright, its surround black: corner ~0, centre clearly not
    assert x[:20, :20].max() < 0.05 and x[650:750, 650:750].mean() > 0.2


def test_microaneurysms_png_is_8bit_gray_over_255() -> None:
    x = load_image(MICRO)
    raw = np.asarray(Image.open(MICRO))
    assert raw.dtype == np.uint8 and raw.ndim == 2
    assert x.shape == (102, 102, 1)
    np.testing.assert_array_equal(x[..., 0], raw.astype(np.float32) / 255)
    np.testing.assert_allclose(load_image(MICRO, channels=3), np.repeat(x, 3, axis=-1))


def test_ct_small_rescale_to_full_range_and_window() -> None:
    ds = pydicom.dcmread(CT)
    assert ds.PixelRepresentation == 1 and float(ds.RescaleIntercept) == -1024
    stored = ds.pixel_array.astype(np.float64)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    bits = int(ds.BitsStored)
    lo = -(2 ** (bits - 1)) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hi = (2 ** (bits - 1) - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    x = load_image(CT)
    assert x.shape == (128, 128, 1)
    np.testing.assert_allclose(x[..., 0], (hu - lo) / (hi - lo), atol=1e-6)
    # a soft-tissue window on Hounsfield units (after RescaleSlope/Intercept)
    xw = load_image(CT, window=(40, 400))
    np.testing.assert_allclose(xw[..., 0], _linear_window(hu, 40, 400), atol=1e-6)
    assert 0.05 < (xw == 1).mean() < 0.95  # the window really clips on this image
    xm = load_image(CT, window="minmax")
    np.testing.assert_allclose(xm[..., 0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_mr_small_uses_its_window_centre_and_width() -> None:
    ds = pydicom.dcmread(MR)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (c, w) == (600.0, 1600.0) and "RescaleSlope" not in ds
    x = load_image(MR)
    np.testing.assert_allclose(x[..., 0], _linear_window(ds.pixel_array.astype(np.float64), c, w), atol=1e-6)
    assert x.min() > 0.2 and x.max() == 1.0


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(MR)
    ds.PhotometricInterpretation = "MONOCHROME1"
    f = tmp_path / "mono1.dcm"
    ds.save_as(f)
    np.testing.assert_allclose(load_image(f), 1.0 - load_image(MR), atol=1e-6)


def test_voi_lut_sequence_wins_over_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(MR)
    first, n = 100, 2000
    lut = (np.arange(n) * 255 // (n - 1)).astype(np.uint16)[::-1].copy()  # a decreasing LUT, 8-bit entries
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    f = tmp_path / "voilut.dcm"
    ds.save_as(f)
    x = load_image(f)[..., 0]
    idx = np.clip(ds.pixel_array.astype(np.int64) - first, 0, n - 1)
    np.testing.assert_allclose(x, lut[idx] / 255.0, atol=1e-6)


def test_multiframe_needs_a_frame() -> None:
    f = DICOM_DIR / "rtdose.dcm"
    with pytest.raises(DataError, match="multi-frame") as err:
        load_image(f)
    assert err.value.path == str(f)
    ds = pydicom.dcmread(f)
    frames = ds.pixel_array.astype(np.float64)
    hi = 2 ** int(ds.BitsStored) - 1  # unsigned, no rescale, no window: full stored range
    assert int(ds.PixelRepresentation) == 0 and "WindowCenter" not in ds
    for k in (0, 7):
        np.testing.assert_allclose(load_image(f, frame=k)[..., 0], frames[k] / hi, rtol=1e-6, atol=1e-9)
    with pytest.raises(DataError, match="out of range"):
        load_image(f, frame=int(ds.NumberOfFrames))


def test_multipage_tiff_needs_a_frame() -> None:
    f = SKIMAGE_DATA / "multipage.tif"
    with pytest.raises(DataError, match="multi-frame"):
        load_image(f)
    with Image.open(f) as im:
        im.seek(1)
        ref = np.asarray(im.convert("L"), dtype=np.float32) / 255
    np.testing.assert_array_equal(load_image(f, frame=1)[..., 0], ref)


# ------------------------------------------------------------------------- files written here


def test_16bit_png_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, size=(7, 9), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    f = tmp_path / "x16.png"
    Image.fromarray(a).save(f)
    x = load_image(f)
    assert x.shape == (7, 9, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], a.astype(np.float32) / 65535)
    assert x[0, 0, 0] == 0.0 and x[0, 1, 0] == 1.0


def test_16bit_tiff_exact(tmp_path: Path) -> None:
    a = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000).astype(np.uint16)
    f = tmp_path / "x16.tif"
    Image.fromarray(a).save(f)
    np.testing.assert_array_equal(load_image(f)[..., 0], a.astype(np.float32) / 65535)


def test_palette_rgba_la_and_bilevel(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    pal = [10, 20, 30, 200, 100, 0, 255, 255, 255]
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal + [0] * (768 - len(pal)))
    im.save(tmp_path / "p.png")
    expected = np.array(pal, np.float32).reshape(3, 3)[idx] / 255
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)

    rgba = np.random.default_rng(1).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[..., :3] / np.float32(255))

    la = np.random.default_rng(2).integers(0, 256, (4, 5, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png")[..., 0], la[..., 0] / np.float32(255))

    bits = np.array([[True, False], [False, True]])
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_image(tmp_path / "b.png")[..., 0], bits.astype(np.float32))
    np.testing.assert_array_equal(load_mask(tmp_path / "b.png"), bits)


def test_rgb_to_one_channel_is_itu_luma(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    save_png(tmp_path / "c.png", rgb)
    x = load_image(tmp_path / "c.png", channels=1)
    ref = (rgb.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(x[..., 0], ref, atol=1e-6)


@pytest.mark.parametrize(("orientation", "k", "flip"), [(1, 0, False), (3, 2, False), (6, -1, False), (8, 1, False),
                                                       (2, 0, True)])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, k: int, flip: bool) -> None:
    a = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 2
    exif = Image.Exif()
    exif[0x0112] = orientation
    f = tmp_path / "o.png"
    Image.fromarray(a).save(f, exif=exif)
    expected = np.rot90(a, k=k)
    if flip:
        expected = expected[:, ::-1]
    np.testing.assert_array_equal(load_image(f), expected / np.float32(255))


# ---------------------------------------------------------------------------------- bad input


def _png_bytes(shape=(40, 50, 3), seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG (8-bit gray) claiming w x h pixels with 100 bytes of image data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100)))


def _assert_data_error(path: Path, match: str, **kw) -> DataError:
    with pytest.raises(DataError, match=match) as err:
        load_image(path, **kw)
    assert err.value.path == str(path)
    assert "\n" not in str(err.value)
    return err.value


def test_missing_empty_directory(tmp_path: Path) -> None:
    _assert_data_error(tmp_path / "nope.png", "not found")
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_data_error(tmp_path / "empty.png", "empty file")
    _assert_data_error(tmp_path, "directory")


def test_truncated_png_and_jpeg(tmp_path: Path) -> None:
    data = _png_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    _assert_data_error(tmp_path / "t.png", "truncated|corrupt")
    jpg = RETINA.read_bytes()
    (tmp_path / "t.jpg").write_bytes(jpg[: len(jpg) // 3])
    _assert_data_error(tmp_path / "t.jpg", "truncated|corrupt")


def test_undecodable_files(tmp_path: Path) -> None:
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    _assert_data_error(tmp_path / "noise.png", "not a readable image")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    _assert_data_error(tmp_path / "text.jpg", "not a readable image")
    (tmp_path / "x.dcm").write_text("not DICOM either")
    _assert_data_error(tmp_path / "x.dcm", "DICOM")


def test_dicom_without_pixel_data_and_truncated() -> None:
    _assert_data_error(DICOM_DIR / "rtplan.dcm", "no pixel data")
    _assert_data_error(DICOM_DIR / "MR_truncated.dcm", "cannot decode DICOM pixel data")


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    # PNG headers that claim huge images but hold no pixel data: refused by the limit, not by decoding
    for side, limit in ((12000, 100_000_000), (50000, 100_000_000), (3000, 8_000_000)):
        (tmp_path / "bomb.png").write_bytes(_png_header_only(side, side))
        _assert_data_error(tmp_path / "bomb.png", "exceeds", max_pixels=limit)
    # a small image above a small limit
    (tmp_path / "s.png").write_bytes(_png_bytes((40, 50, 3)))
    _assert_data_error(tmp_path / "s.png", "exceeds the limit", max_pixels=1999)
    assert load_image(tmp_path / "s.png", max_pixels=2000).shape == (40, 50, 3)
    # a DICOM with absurd Rows x Columns and 8 KB of pixel data
    ds = pydicom.dcmread(MR)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(tmp_path / "absurd.dcm")
    _assert_data_error(tmp_path / "absurd.dcm", "exceeds the limit")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_is_a_data_error_or_a_valid_image(tmp_path: Path, data: st.DataObject) -> None:
    """Truncations and byte flips of PNG / JPEG / DICOM: a valid image or a DataError, nothing else."""
    kind = data.draw(st.sampled_from(["png", "jpg", "dcm"]))
    src = {"png": _png_bytes((16, 12, 3)), "jpg": (SKIMAGE_DATA / "rocket.jpg").read_bytes()[:6000],
           "dcm": MR.read_bytes()}[kind]
    cut = data.draw(st.integers(0, len(src)))
    buf = bytearray(src[:cut])
    for _ in range(data.draw(st.integers(0, 3))):
        if buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= 0xFF
    f = tmp_path / f"fuzz.{kind}"
    f.write_bytes(bytes(buf))
    try:
        x = load_image(f)
    except DataError as exc:
        assert exc.path == str(f) and exc.reason
    else:
        assert x.dtype == np.float32 and x.ndim == 3 and x.shape[-1] in (1, 3)
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    os.remove(f)
