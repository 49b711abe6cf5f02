"""The ct-nodule synthetic volume study: determinism, masks that are exactly the voxels the nodules
changed (render with lesions=False and compare), the slice-overlay shortcut's rates per split, and the
written layout (NIfTI and DICOM) reading back through open_dataset as the same volumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medxai.cli import main
from medxai.data import SyntheticVolumeDataset, open_dataset
from medxai.data.synthetic import STUDIES, VOLUME_STUDIES, generate_volume, volume_label
from medxai.data.synthetic.ct import HU, HU_MAX, HU_MIN
from medxai.data.volumes import VOLUME_WINDOWS
from medxai.errors import ConfigError

KW = {"size": 16, "depth": 8}


def test_registered_as_a_volume_study():
    assert VOLUME_STUDIES == ("ct-nodule",) and "ct-nodule" not in STUDIES
    one = generate_volume("ct-nodule", 0, **KW)
    assert one["hu"].dtype == np.int16 and one["hu"].shape == (8, 16, 16)
    assert one["image"].shape == (1, 8, 16, 16) and one["image"].dtype == np.float32
    assert one["spacing"] == (300.0 / 8, 350.0 / 16, 350.0 / 16)


def test_deterministic_bytes_per_seed_split_index():
    a = generate_volume("ct-nodule", 3, seed=7, shortcut=0.8, **KW)
    b = generate_volume("ct-nodule", 3, seed=7, shortcut=0.8, **KW)
    assert a["hu"].tobytes() == b["hu"].tobytes() and a["mask"].tobytes() == b["mask"].tobytes()
    assert a["shortcut_mask"].tobytes() == b["shortcut_mask"].tobytes()
    for other in ({"seed": 8}, {"split": "val", "seed": 7}):
        assert generate_volume("ct-nodule", 3, shortcut=0.8, **KW, **other)["hu"].tobytes() != a["hu"].tobytes()
    assert generate_volume("ct-nodule", 4, seed=7, **KW)["hu"].tobytes() != a["hu"].tobytes()
    ds = SyntheticVolumeDataset("ct-nodule", 5, seed=7, shortcut=0.8, **KW)
    assert torch.equal(ds[3]["image"], torch.from_numpy(a["image"]))
    assert ds.labels.tolist() == [generate_volume("ct-nodule", i, seed=7, **KW)["label"] for i in range(5)]


def test_image_is_the_lung_window_of_the_hu():
    one = generate_volume("ct-nodule", 1, seed=2, **KW)
    c, w = VOLUME_WINDOWS["lung"]
    ref = np.clip((one["hu"].astype(np.float64) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(one["image"][0], ref, atol=1e-6)
    assert HU_MIN <= one["hu"].min() and one["hu"].max() <= HU_MAX
    assert one["hu"].min() < -900 and one["hu"].max() > 300  # air and bone present


def test_masks_are_exactly_the_voxels_the_nodules_changed():
    found = 0
    for i in range(12):
        on = generate_volume("ct-nodule", i, seed=1, shortcut=0.7, **KW)
        off = generate_volume("ct-nodule", i, seed=1, shortcut=0.7, lesions=False, **KW)
        changed = on["hu"] != off["hu"]
        np.testing.assert_array_equal(changed, on["mask"])
        np.testing.assert_array_equal(on["mask"], off["mask"])  # masks unchanged by lesions=False
        assert not (on["mask"] & on["shortcut_mask"]).any()
        if on["label"] == 1:
            found += 1
            assert on["mask"].sum() > 0
            vals = on["hu"][on["mask"]].astype(float)
            assert 10 - 80 < vals.mean() < 80 + 80  # solid nodule HU (10-80) plus noise
            assert (off["hu"][on["mask"]] < 0).all()  # replaced lung / vessel, never soft tissue or bone
        else:
            assert not on["mask"].any()
    assert found >= 3


def _rates(split: str, p: float, n: int) -> tuple[float, float]:
    pres = {0: [], 1: []}
    for i in range(n):
        one = generate_volume("ct-nodule", i, seed=5, split=split, shortcut=p, **KW)
        pres[one["label"]].append(one["shortcut_present"])
        sm = one["shortcut_mask"]
        if one["shortcut_present"]:
            slices = np.flatnonzero(sm.any(axis=(1, 2)))
            assert len(slices) == slices[-1] - slices[0] + 1 and 2 <= len(slices) <= 4  # a run of 25-50 % of 8
            assert all((sm[k] == sm[slices[0]]).all() for k in slices)  # one glyph on every slice of the run
            assert (one["hu"][sm] == HU["marker"]).all() and (one["image"][0][sm] == 1.0).all()
        else:
            assert not sm.any()
    return float(np.mean(pres[1])), float(np.mean(pres[0]))


def test_shortcut_follows_the_label_in_train_and_is_half_in_test():
    pos, neg = _rates("train", 0.9, 240)
    assert abs(pos - 0.9) < 0.07 and abs(neg - 0.1) < 0.07
    pos, neg = _rates("test", 0.9, 240)
    assert abs(pos - 0.5) < 0.11 and abs(neg - 0.5) < 0.11


def test_labels_without_rendering_and_options():
    assert [volume_label("ct-nodule", i, **KW) for i in range(20)] == \
        [generate_volume("ct-nodule", i, **KW)["label"] for i in range(20)]
    assert sum(volume_label("ct-nodule", i, 16, shares=[0.0, 1.0]) for i in range(10)) == 10
    for bad in ({"depth": 2}, {"depth": 1.5}, {"colour": 1}, {"lesions": "no"}):
        with pytest.raises(ConfigError):
            generate_volume("ct-nodule", 0, size=16, **bad)
    with pytest.raises(ConfigError):
        generate_volume("ct-nodule", 0, size=8)


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_cli_writes_the_study_and_open_dataset_gives_the_same_volumes(tmp_path, fmt):
    out = tmp_path / "ct"
    main(["--quiet", "data", "synth", "ct-nodule", "--out", str(out), "--n", "6", "--size", "16", "--seed", "3",
          "--shortcut", "0.8", "--option", "depth=8", "--splits", "train=0.5,test=0.5", "--format", fmt])
    meta = json.loads((out / "medxai.json").read_text())
    assert meta["layout"] == "volumes" and meta["splits"] == {"train": 3, "test": 3}
    with open(out / "volumes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["split"] for r in rows] == ["train"] * 3 + ["test"] * 3
    assert all(r["path"].endswith(".nii.gz") == (fmt == "nifti") for r in rows)
    for split in ("train", "test"):
        ds = open_dataset(out, split=split)
        syn = SyntheticVolumeDataset("ct-nodule", 3, size=16, seed=3, split=split, shortcut=0.8, depth=8)
        assert ds.labels.tolist() == syn.labels.tolist() and ds.class_names == ["no_nodule", "nodule"]
        for i in range(3):
            a, b = ds[i], syn[i]
            for key in ("image", "mask", "shortcut_mask", "label"):
                assert torch.equal(a[key], b[key]), (split, i, key)
            np.testing.assert_allclose(a["spacing"].numpy(), b["spacing"].numpy(), rtol=1e-6)
            assert a["id"] == f"{split}/{b['id']}" and bool(a["has_mask"])
