"""Volumes: NIfTI and DICOM series readers (ordering, spacing, modality LUT, windows), refusals naming
the series and slice, resampling (linear ramps, masks), and the volume CSV layout through open_dataset.
Anchors: SimpleITK's series reader / NIfTI reader / Resample where it imports, nibabel's own get_fdata,
the 2-D DICOM reader (medxai.data.io) for the window, and DICOM PS3.3 C.11.2.1.2.1 written out here."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medxai.data import open_dataset
from medxai.data.io import load_image
from medxai.data.volumes import (
    VOLUME_WINDOWS,
    apply_window,
    load_volume,
    read_dicom_series,
    read_nifti,
    resample,
    write_dicom_series,
    write_nifti,
)
from medxai.errors import DataError

SPACING = (2.5, 0.7, 0.8)  # (sd, sh, sw) mm
# An oblique orientation: rows along (cos a, sin a, 0), columns along (-sin a cos b, cos a cos b, sin b).
A, B = 0.3, 0.2
IOP = (math.cos(A), math.sin(A), 0.0, -math.sin(A) * math.cos(B), math.cos(A) * math.cos(B), math.sin(B))
ORIGIN = (-12.0, 30.5, 100.25)


def _hu(shape=(8, 12, 10), seed=0) -> np.ndarray:
    """Even integers in [-1000, 1400] (exact under slope 2) with a per-slice offset, so the order shows."""
    rng = np.random.default_rng(seed)
    vol = 2 * rng.integers(-500, 600, shape)
    vol += (100 * np.arange(shape[0]))[:, None, None]
    return vol.astype(np.float64)


def _series(folder: Path, hu: np.ndarray, **kw) -> list[Path]:
    """A series written in shuffled file order with InstanceNumbers shuffled too."""
    rng = np.random.default_rng(1)
    d = hu.shape[0]
    names = [f"im{k:02d}.dcm" for k in rng.permutation(d)]
    opts = {"orientation": IOP, "origin": ORIGIN, "slope": 2.0, "intercept": -1024.0} | kw
    files = write_dicom_series(folder, hu, SPACING, names=names, **opts)
    for f, inst in zip(files, rng.permutation(d) + 1, strict=True):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(inst)
        ds.save_as(f)
    return files


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------- DICOM series


def test_dicom_series_reads_back_in_position_order_with_spacing(tmp_path):
    hu = _hu()
    _series(tmp_path / "s1", hu)
    vol = read_dicom_series(tmp_path / "s1")
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))  # modality LUT: 2 * stored - 1024
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=0, atol=1e-5)
    # the affine maps (d, h, w) to where the slice's pixel lies: IPP + h * PS[0] * col + w * PS[1] * row
    row, col = np.asarray(IOP[:3]), np.asarray(IOP[3:])
    d, h, w = 5, 3, 7
    expect = np.asarray(ORIGIN) + d * SPACING[0] * np.cross(row, col) + h * SPACING[1] * col + w * SPACING[2] * row
    np.testing.assert_allclose((vol.affine @ [d, h, w, 1.0])[:3], expect, atol=1e-4)


def test_dicom_series_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    hu = _hu(seed=3)
    _series(tmp_path / "s", hu)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    ref = reader.Execute()
    vol = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref).astype(np.float32))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing()[::-1], atol=1e-5)


def test_window_is_dicom_linear_voi_and_matches_the_2d_reader(tmp_path):
    hu = _hu()
    files = _series(tmp_path / "s", hu)
    img, spacing = load_volume(tmp_path / "s", window="lung")
    np.testing.assert_allclose(spacing, SPACING, atol=1e-5)
    c, w = VOLUME_WINDOWS["lung"]
    assert (c, w) == (-600.0, 1500.0)
    ref = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    np.testing.assert_allclose(img[0].numpy(), ref, atol=1e-6)
    # the 2-D reader on one slice file gives the same values (to float32 rounding)
    vol = read_dicom_series(tmp_path / "s")
    pos = [pydicom.dcmread(f).ImagePositionPatient for f in files]
    normal = np.cross(IOP[:3], IOP[3:])
    k = int(np.argmax([np.dot(np.asarray(p, float), normal) for p in pos]))  # the last slice
    two_d = load_image(files[k], window="lung")[..., 0]
    np.testing.assert_allclose(img[0, -1].numpy(), two_d, atol=2e-6)
    assert vol.array.shape == hu.shape
    # named windows and [center, width]
    for name, (cc, ww) in (("bone", (400, 1800)), ("soft_tissue", (50, 350)), ("brain", (40, 80))):
        got = load_volume(tmp_path / "s", window=name)[0][0].numpy()
        np.testing.assert_allclose(got, np.clip((hu - (cc - 0.5)) / (ww - 1) + 0.5, 0, 1), atol=1e-6)
    got = load_volume(tmp_path / "s", window=[100, 500])[0][0].numpy()
    np.testing.assert_allclose(got, np.clip((hu - 99.5) / 499 + 0.5, 0, 1), atol=1e-6)


def test_file_window_is_used_by_default_else_minmax(tmp_path):
    hu = _hu()
    _series(tmp_path / "w", hu, window=(40.0, 400.0))
    img = load_volume(tmp_path / "w")[0][0].numpy()
    np.testing.assert_allclose(img, np.clip((hu - 39.5) / 399 + 0.5, 0, 1), atol=1e-6)
    _series(tmp_path / "n", hu)
    img = load_volume(tmp_path / "n")[0][0].numpy()
    np.testing.assert_allclose(img, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_missing_slice_is_named(tmp_path):
    hu = _hu()
    files = _series(tmp_path / "gap", hu)
    normal = np.cross(IOP[:3], IOP[3:])
    by_pos = sorted(files, key=lambda f: np.dot(np.asarray(pydicom.dcmread(f).ImagePositionPatient, float), normal))
    by_pos[4].unlink()
    with pytest.raises(DataError, match="missing slice") as exc:
        read_dicom_series(tmp_path / "gap")
    msg = _one_line(exc)
    assert "gap" in msg and by_pos[3].name in msg and by_pos[5].name in msg and "2.00x" in msg


def _edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_inconsistent_spacing_orientation_size_and_mixed_series_are_refused(tmp_path):
    hu = _hu()
    normal = np.cross(IOP[:3], IOP[3:])
    cases = {}
    for name in ("step", "orient", "ps", "rows", "mixed"):
        files = _series(tmp_path / name, hu)
        cases[name] = sorted(files, key=lambda f: np.dot(np.asarray(pydicom.dcmread(f).ImagePositionPatient, float),
                                                         normal))
    moved = np.asarray(pydicom.dcmread(cases["step"][5]).ImagePositionPatient, float) + 0.6 * normal
    _edit(cases["step"][5], ImagePositionPatient=[f"{v:.6f}" for v in moved])
    _edit(cases["orient"][2], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    _edit(cases["ps"][2], PixelSpacing=[0.71, 0.8])
    small = hu[0, :6, :10] + 1024
    _edit(cases["rows"][2], Rows=6, PixelData=small.astype("<u2").tobytes())
    _edit(cases["mixed"][2], SeriesInstanceUID=pydicom.uid.generate_uid())
    expect = {"step": ("inconsistent spacing", cases["step"][5].name),
              "orient": ("inconsistent orientation", cases["orient"][2].name),
              "ps": ("inconsistent spacing: PixelSpacing", cases["ps"][2].name),
              "rows": ("6x10", cases["rows"][2].name), "mixed": ("mixed series", cases["mixed"][2].name)}
    for name, (what, slice_name) in expect.items():
        with pytest.raises(DataError) as exc:
            read_dicom_series(tmp_path / name)
        msg = _one_line(exc)
        assert what in msg and slice_name in msg and name in msg, msg


def test_corrupt_slice_and_voxel_limit(tmp_path):
    hu = _hu()
    files = _series(tmp_path / "bad", hu)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 100])  # pixel data cut short
    with pytest.raises(DataError, match="cannot decode slice") as exc:
        read_dicom_series(tmp_path / "bad")
    assert files[3].name in _one_line(exc) and "bad" in str(exc.value)
    # the limit counts voxels (slices x rows x cols) and is checked before any pixel is decoded
    n = hu.size
    with pytest.raises(DataError, match=f"{n} voxels exceeds the limit of {n - 1}") as exc:
        read_dicom_series(tmp_path / "bad", max_voxels=n - 1)
    _one_line(exc)


# ---------------------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_spacing_values_and_scaling(tmp_path):
    nib = pytest.importorskip("nibabel")
    arr = np.random.default_rng(0).normal(size=(6, 9, 7)).astype(np.float32)
    p = write_nifti(tmp_path / "v.nii.gz", arr, (3.0, 0.5, 0.75), origin=(1.0, 2.0, 3.0))
    vol = read_nifti(p)
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing == (3.0, 0.5, 0.75)
    np.testing.assert_array_equal(np.asarray(nib.load(p).get_fdata(), np.float32).transpose(2, 1, 0), arr)
    np.testing.assert_allclose(vol.affine @ [2, 1, 4, 1], [1 + 4 * 0.75, 2 + 0.5, 3 + 2 * 3.0, 1])
    stored = np.arange(6 * 9 * 7, dtype=np.int16).reshape(6, 9, 7)
    p = write_nifti(tmp_path / "s.nii", stored, slope=0.5, inter=-100.0)
    np.testing.assert_allclose(read_nifti(p).array, stored * 0.5 - 100.0)
    four = np.stack([arr, -arr])
    np.testing.assert_array_equal(read_nifti(write_nifti(tmp_path / "c.nii", four)).array, four)


def test_nifti_axis_order_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    arr = np.random.default_rng(1).normal(size=(5, 8, 6)).astype(np.float32)
    p = write_nifti(tmp_path / "v.nii.gz", arr, (2.0, 0.6, 0.9))
    ref = sitk.ReadImage(str(p))
    np.testing.assert_array_equal(read_nifti(p).array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(read_nifti(p).spacing, ref.GetSpacing()[::-1], atol=1e-6)


def test_truncated_nifti_and_voxel_limit_are_one_line_errors(tmp_path):
    arr = np.zeros((8, 16, 16), np.float32)
    for name in ("t.nii", "t.nii.gz"):
        p = write_nifti(tmp_path / name, arr + 1)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2] if name.endswith(".nii") else data[: len(data) - 20])
        with pytest.raises(DataError) as exc:
            read_nifti(p)
        assert str(p) in _one_line(exc)
    p = write_nifti(tmp_path / "ok.nii", arr)
    with pytest.raises(DataError, match="2048 voxels exceeds the limit of 2047") as exc:
        read_nifti(p, max_voxels=2047)
    assert str(p) in _one_line(exc)
    (tmp_path / "junk.nii").write_bytes(b"not a nifti" * 40)
    with pytest.raises(DataError, match="not a readable NIfTI") as exc:
        read_nifti(tmp_path / "junk.nii")
    _one_line(exc)


# ------------------------------------------------------------------------------------- resample


def _ramp(shape, spacing, coef=(0.3, 0.1, -0.05), c0=2.0) -> torch.Tensor:
    d, h, w = (torch.arange(n, dtype=torch.float64) * s for n, s in zip(shape, spacing, strict=True))
    return (c0 + coef[0] * d[:, None, None] + coef[1] * h[None, :, None] + coef[2] * w[None, None, :])


def test_resample_keeps_a_linear_ramp_linear():
    shape, sp, new = (6, 10, 12), (2.0, 1.0, 1.0), (1.0, 0.5, 2.0)
    x = _ramp(shape, sp).float()[None]
    out, ns = resample(x, sp, new_spacing=new)
    assert tuple(out.shape) == (1, 12, 20, 6) and ns == new  # round(n * s / s')
    ref = _ramp(out.shape[1:], new).float()
    inside = [int((n - 1) * s // t) + 1 for n, s, t in zip(shape, sp, new, strict=True)]  # centres in the extent
    got = out[0, :inside[0], :inside[1], :inside[2]]
    np.testing.assert_allclose(got.numpy(), ref[:inside[0], :inside[1], :inside[2]].numpy(), atol=1e-5)
    # size only: spacing n * s / m; batch equals one by one
    xb = torch.stack([x, 2 * x])
    outb, ns2 = resample(xb, sp, size=(3, 5, 6))
    assert ns2 == (4.0, 2.0, 2.0)
    np.testing.assert_allclose(outb[1].numpy(), resample(2 * x, sp, size=(3, 5, 6))[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(outb[0, 0].numpy(), _ramp((3, 5, 6), ns2).numpy(), atol=1e-5)


def test_resample_masks_stay_binary_and_pick_voxels():
    m = torch.from_numpy(np.random.default_rng(0).random((1, 8, 10, 12)) > 0.6)
    out, _ = resample(m, (1.0, 1.0, 1.0), new_spacing=(2.0, 2.0, 3.0), mode="nearest")
    assert out.dtype == torch.bool and tuple(out.shape) == (1, 4, 5, 4)
    np.testing.assert_array_equal(out.numpy(), m[:, ::2, ::2, ::3].numpy())  # integer positions: exact voxels
    up, _ = resample(m, (1.0, 1.0, 1.0), new_spacing=(0.5, 0.5, 0.5), mode="nearest")
    assert up.dtype == torch.bool and abs(float(up.float().mean()) - float(m.float().mean())) < 0.05


def test_resample_matches_simpleitk_linear():
    sitk = pytest.importorskip("SimpleITK")
    arr = np.random.default_rng(2).normal(size=(7, 9, 11))
    sp, new = (1.5, 1.0, 0.8), (1.0, 1.7, 0.5)
    out, _ = resample(torch.from_numpy(arr)[None], sp, new_spacing=new)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(sp[::-1])
    size = tuple(out.shape[1:])
    ref = sitk.Resample(img, size[::-1], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), new[::-1],
                        img.GetDirection(), 0.0, sitk.sitkFloat64)
    r = sitk.GetArrayFromImage(ref)
    inside = [int((n - 1) * s // t) + 1 for n, s, t in zip(arr.shape, sp, new, strict=True)]
    sl = tuple(slice(0, k) for k in inside)
    np.testing.assert_allclose(out[0].numpy()[sl], r[sl], atol=1e-9)


def test_apply_window_minmax_and_constant():
    x = torch.tensor([[-5.0, 0.0, 5.0]])
    np.testing.assert_allclose(apply_window(x, "minmax").numpy(), [[0.0, 0.5, 1.0]])
    assert float(apply_window(torch.ones(4), "minmax").abs().sum()) == 0.0


# ------------------------------------------------------------------------------------- dataset


def _csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_volume_csv_layout_through_open_dataset(tmp_path):
    hu = _hu((4, 8, 6))
    _series(tmp_path / "cases" / "a", hu)
    write_nifti(tmp_path / "cases" / "b.nii.gz", hu.astype(np.int16), SPACING)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1:3, 2:5, 1:4] = 1
    write_nifti(tmp_path / "masks" / "a.nii.gz", mask, SPACING)
    _csv(tmp_path / "index.csv", [{"path": "cases/a", "label": "1", "mask": "masks/a.nii.gz", "split": "train"},
                                  {"path": "cases/b.nii.gz", "label": "0", "mask": "", "split": "train"}])
    ds = open_dataset(tmp_path / "index.csv", window="lung")
    assert ds.ids == ["cases/a", "cases/b"] and ds.labels.tolist() == [1, 0]
    a, b = ds[0], ds[1]
    c, w = VOLUME_WINDOWS["lung"]
    ref = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(a["image"][0].numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(b["image"][0].numpy(), ref, atol=1e-6)  # same values from NIfTI as from DICOM
    assert a["mask"].dtype == torch.bool and a["mask"].shape == (1, 4, 8, 6)
    np.testing.assert_array_equal(a["mask"][0].numpy(), mask.astype(bool))
    assert bool(a["has_mask"]) and not bool(b["has_mask"]) and int(b["mask"].sum()) == 0
    np.testing.assert_allclose(a["spacing"].numpy(), SPACING, atol=1e-5)
    rs = open_dataset(tmp_path / "index.csv", window="lung", spacing=[5.0, 1.4, 1.6])[0]
    assert rs["image"].shape == (1, 2, 4, 3) and rs["mask"].dtype == torch.bool
    np.testing.assert_array_equal(rs["mask"][0].numpy(), mask.astype(bool)[::2, ::2, ::2])
    assert open_dataset(tmp_path / "index.csv", window="lung", size=5)[1]["image"].shape == (1, 5, 5, 5)


def test_volume_layout_bad_records_are_named_and_skippable(tmp_path):
    write_nifti(tmp_path / "ok.nii", np.zeros((4, 16, 16), np.int16))
    write_nifti(tmp_path / "big.nii", np.zeros((8, 16, 16), np.int16))
    p = write_nifti(tmp_path / "cut.nii", np.ones((4, 16, 16), np.float32))
    p.write_bytes(p.read_bytes()[:600])
    _csv(tmp_path / "v.csv", [{"path": "ok.nii", "label": "a"}, {"path": "cut.nii", "label": "b"},
                              {"path": "nope.nii", "label": "a"}])
    with pytest.raises(DataError, match=r"nope\.nii"):
        open_dataset(tmp_path / "v.csv")
    ds = open_dataset(tmp_path / "v.csv", on_error="skip")
    assert ds.ids == ["ok"] and {Path(s[0]).name for s in ds.skipped} >= {"cut.nii"}
    _csv(tmp_path / "w.csv", [{"path": "big.nii", "label": "a"}])
    with pytest.raises(DataError, match="2048 voxels exceeds the limit of 1024") as exc:
        open_dataset(tmp_path / "w.csv", max_pixels=1024)[0]
    assert "big.nii" in _one_line(exc)


def test_volume_header_agrees_with_reading(tmp_path):
    from medxai.data.volumes import volume_header

    hu = _hu()
    _series(tmp_path / "s", hu)
    p = write_nifti(tmp_path / "v.nii.gz", hu.astype(np.int16), SPACING)
    for path, vol in ((tmp_path / "s", read_dicom_series(tmp_path / "s")), (p, read_nifti(p))):
        head = volume_header(path)
        assert head["shape"] == vol.array.shape
        np.testing.assert_allclose(head["spacing"], vol.spacing, atol=1e-6)
        with pytest.raises(DataError, match="exceeds the limit"):
            volume_header(path, max_voxels=hu.size - 1)


def test_volume_folder_layout_is_detected_from_nifti_files(tmp_path):
    rng = np.random.default_rng(0)
    vols = {}
    for split, cls, name in (("train", "benign", "c1"), ("train", "malignant", "c2"), ("test", "benign", "c3")):
        vols[name] = rng.integers(-1000, 400, (4, 8, 8)).astype(np.int16)
        write_nifti(tmp_path / split / cls / f"{name}.nii.gz", vols[name], SPACING)
    m = np.zeros((4, 8, 8), np.uint8)
    m[1, 2:4, 2:4] = 1
    write_nifti(tmp_path / "masks" / "train" / "malignant" / "c2.nii.gz", m, SPACING)
    ds = open_dataset(tmp_path, split="train", mask_dir="masks", window=[0, 2000])
    assert ds.ids == ["train/benign/c1", "train/malignant/c2"] and ds.labels.tolist() == [0, 1]
    item = ds[1]
    np.testing.assert_allclose(item["image"][0].numpy(),
                               np.clip((vols["c2"] + 0.5) / 1999 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), m.astype(bool))
    assert bool(item["has_mask"]) and not bool(ds[0]["has_mask"])
    assert open_dataset(tmp_path, split="test", mask_dir="masks").ids == ["test/benign/c3"]
