"""Dataset layouts on disk: folder, CSV (Kaggle DR, HAM10000), CheXpert, MedMNIST, masks and boxes;
the synthetic round trip through the real layouts; every bad-input case names the file and the reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medxai.cli import main
from medxai.data import apply_uncertainty, open_dataset, write_study
from medxai.data.synthetic import STUDIES, generate
from medxai.errors import ConfigError, DataError


def _png(path: Path, value: int = 128, size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]) if mode == "L" else (size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


# ------------------------------------------------------------------------------- synthetic round trip
@pytest.mark.parametrize("study", STUDIES)
def test_synth_written_then_opened_equals_generate(study, tmp_path):
    shortcut = None if study == "cxr-multilabel" else 0.8
    made = {sp: generate(study, n, size=32, seed=3, split=sp, shortcut=shortcut)
            for sp, n in (("train", 7), ("test", 5))}
    for s in made.values():
        write_study(s, tmp_path)
    for sp, s in made.items():
        ds = open_dataset(tmp_path, split=sp)
        assert len(ds) == len(s)
        assert list(ds.class_names) == list(s.class_names)
        # folder layouts list images class by class (match by id); CSV layouts keep the row order
        by_id = {ds[i]["id"].rsplit("/", 1)[-1]: ds[i] for i in range(len(ds))}
        for j, ident in enumerate(s.ids):
            it = ds[j] if study == "cxr-multilabel" else by_id[ident.rsplit("/", 1)[-1]]
            expect = torch.from_numpy(s.images[j]).permute(2, 0, 1).float() / 255
            torch.testing.assert_close(it["image"], expect, rtol=0, atol=0)
            mask = torch.from_numpy(np.asarray(s.masks[j], bool))
            mask = mask if mask.ndim == 3 else mask[None]
            assert torch.equal(it["mask"], mask)
            if shortcut is not None:
                assert torch.equal(it["shortcut_mask"][0], torch.from_numpy(np.asarray(s.shortcut_masks[j], bool)))
            if study == "cxr-multilabel":
                raw = np.asarray(s.labels[j], np.float64)  # CheXpert vocabulary: 1, 0, -1, NaN (blank)
                expect_lab = np.where(raw == -1, np.nan, np.where(np.isnan(raw), 0.0, raw))  # default U-Ignore
                np.testing.assert_array_equal(it["label"].numpy(), expect_lab)
            else:
                assert int(it["label"]) == int(s.labels[j])
    if study == "skin-lesion":
        it = open_dataset(tmp_path, split="train")[0]
        assert it["evidence_mask"].dtype == torch.bool


def test_cli_synth_then_info(tmp_path, capsys):
    out = tmp_path / "pneu"
    main(["--quiet", "data", "synth", "cxr-pneumonia", "--out", str(out), "--n", "20", "--size", "24", "--seed", "1",
          "--shortcut", "0.9"])
    capsys.readouterr()
    main(["data", "info", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 20 and info["task"] == "binary" and info["image_sizes"] == {"24x24": 20}
    assert info["problems"] == []
    for sp, block in info["splits"].items():
        ds = open_dataset(out, split=sp)
        labels = np.asarray(ds.labels)
        assert block["n"] == len(ds)
        assert block["classes"] == {"NORMAL": int((labels == 0).sum()), "PNEUMONIA": int((labels == 1).sum())}
        masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])
        assert info["masks"][sp]["nonempty_share"] == pytest.approx(float(masks.flatten(1).any(1).float().mean()))
        assert info["masks"][sp]["mean_area_share"] == pytest.approx(float(masks.float().mean()))
    # the files are the generator's: same seed, same bytes
    ds = open_dataset(out, split="train")
    first = generate("cxr-pneumonia", 1, size=24, seed=1, split="train", shortcut=0.9)
    it = next(ds[i] for i in range(len(ds)) if ds[i]["id"].rsplit("/", 1)[-1] == first.ids[0])
    torch.testing.assert_close(it["image"], torch.from_numpy(first.images[0]).permute(2, 0, 1).float() / 255,
                               rtol=0, atol=0)
    (out / "train" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    capsys.readouterr()
    main(["data", "info", str(out), "--json", "--decode"])
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and "broken.png" in json.dumps(problems)


# ------------------------------------------------------------------------------------ folder layout
def test_folder_layout_with_splits_classes_and_masks(tmp_path):
    for sp, cls, name, v in [("train", "NORMAL", "a", 10), ("train", "PNEUMONIA", "b", 200),
                             ("test", "NORMAL", "c", 30), ("val", "PNEUMONIA", "d", 40)]:
        _png(tmp_path / sp / cls / f"{name}.jpeg", v)
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 255
    (tmp_path / "masks" / "train" / "PNEUMONIA").mkdir(parents=True)
    Image.fromarray(m).save(tmp_path / "masks" / "train" / "PNEUMONIA" / "b.png")
    ds = open_dataset({"layout": "folder", "root": str(tmp_path), "mask_dir": "masks"}, split="train")
    assert ds.class_names == ["NORMAL", "PNEUMONIA"] and len(ds) == 2
    items = sorted((ds[i] for i in range(2)), key=lambda it: it["id"])
    assert [int(it["label"]) for it in items] == [0, 1]
    # JPEG is lossy; a flat grey stays within a level or two
    assert abs(float(items[1]["image"].mean()) - 200 / 255) < 3 / 255
    assert items[1]["mask"].sum() == 6 and bool(items[1]["mask"][0, 1, 2]) and not bool(items[1]["mask"][0, 0, 0])
    assert not bool(items[0]["has_mask"]) and items[0]["mask"].sum() == 0
    assert len(open_dataset(tmp_path, split="val")) == 1 and len(open_dataset(tmp_path)) == 4


def test_folder_without_splits_uses_seeded_fractions(tmp_path):
    for i in range(40):
        _png(tmp_path / ("a" if i % 2 else "b") / f"{i:02d}.png", i)
    spec = {"layout": "folder", "root": str(tmp_path), "val_fraction": 0.25, "test_fraction": 0.25, "split_seed": 7}
    parts = {sp: {open_dataset(spec, split=sp)[i]["id"] for i in range(len(open_dataset(spec, split=sp)))}
             for sp in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 40
    assert not (parts["train"] & parts["val"]) and not (parts["val"] & parts["test"])
    assert all(4 <= len(parts[s]) <= 18 for s in ("val", "test"))
    again = open_dataset(spec, split="test")
    assert {again[i]["id"] for i in range(len(again))} == parts["test"]
    with pytest.raises(ConfigError, match="cannot select split"):
        open_dataset({"layout": "folder", "root": str(tmp_path)}, split="test")


# --------------------------------------------------------------------------------------- CSV layouts
def test_kaggle_dr_csv_layout_keeps_both_eyes_of_a_patient_together(tmp_path):
    rows = ["image,level"]
    for p in range(30):
        for eye in ("left", "right"):
            _png(tmp_path / "train" / f"{p}_{eye}.jpeg", 100, mode="RGB")
            rows.append(f"{p}_{eye},{(p + (eye == 'left')) % 5}")
    (tmp_path / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "trainLabels.csv", "val_fraction": 0.2, "test_fraction": 0.2}
    full = open_dataset({k: v for k, v in spec.items() if "fraction" not in k})
    assert full.task == "ordinal" and full.class_names == ["0", "1", "2", "3", "4"] and len(full) == 60
    labels = dict(zip(full.ids, np.asarray(full.labels).tolist(), strict=True))
    assert labels["train/3_left"] == 4 and labels["train/3_right"] == 3
    for sp in ("train", "val", "test"):
        ds = open_dataset(spec, split=sp)
        patients = [i.split("_")[0] for i in ds.ids]
        assert all(patients.count(p) == 2 for p in patients), sp  # never one eye in train, the other in test


def test_ham10000_csv_with_classes_drop_and_group_column(tmp_path):
    rows = ["lesion_id,image_id,dx"]
    dx = ["nv", "mel", "bkl", "akiec"]
    for i in range(12):
        _png(tmp_path / "images" / f"ISIC_{i:03d}.jpg", 50 + i, mode="RGB")
        rows.append(f"HAM_{i // 2},ISIC_{i:03d},{dx[i % 4]}")
    (tmp_path / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "HAM10000_metadata.csv", "image_column": "image_id",
            "label_column": "dx", "image_dir": "images", "image_suffix": ".jpg", "classes": ["nv", "mel", "bkl"]}
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv.*'akiec' is not in the class list"):
        open_dataset(spec)
    ds = open_dataset({**spec, "other_classes": "drop"})
    assert len(ds) == 9 and ds.task == "multiclass"
    assert np.asarray(ds.labels).tolist() == [[0, 1, 2][i % 4] for i in range(12) if i % 4 != 3]


def test_csv_split_column_and_unknown_split(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "d.csv").write_text("image,label,split\n0.png,a,train\n1.png,b,valid\n2.png,a,test\n3.png,b,test\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    assert len(open_dataset(spec, split="test")) == 2 and len(open_dataset(spec, split="val")) == 1
    (tmp_path / "d.csv").write_text("image,label,split\n0.png,a,train\n1.png,b,holdout\n")
    with pytest.raises(DataError, match=r"d\.csv.*row 3.*unknown split 'holdout'"):
        open_dataset(spec)


# ------------------------------------------------------------------------------------------ CheXpert
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def _chexpert(tmp_path: Path, small: bool = True) -> Path:
    root = tmp_path / ("CheXpert-v1.0-small" if small else "CheXpert-v1.0")
    head = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FIVE]
    rows = [
        ["patient00001/study1/view1_frontal.jpg", "Male", "60", "Frontal", "AP", "1.0", "-1.0", "", "0.0", "-1.0"],
        ["patient00001/study1/view2_lateral.jpg", "Male", "60", "Lateral", "", "1.0", "0.0", "", "", ""],
        ["patient00002/study1/view1_frontal.jpg", "Female", "41", "Frontal", "PA", "", "", "-1.0", "1.0", "0.0"],
        ["patient00003/study2/view1_frontal.jpg", "Female", "77", "Frontal", "AP", "-1.0", "1.0", "1.0", "-1.0", ""],
    ]
    lines = [",".join(head)]
    for r in rows:
        _png(root / "train" / r[0], 90, size=(10, 12))
        lines.append(",".join([f"{root.name}/train/{r[0]}", *[f'"{v}"' if "," in v else v for v in r[1:]]]))
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    _png(root / "valid" / "patient09999/study1/view1_frontal.jpg", 90, size=(10, 12))
    (root / "valid.csv").write_text(",".join(head) + "\n" + ",".join(
        [f"{root.name}/valid/patient09999/study1/view1_frontal.jpg", "Male", "50", "Frontal", "AP",
         "0.0", "1.0", "0.0", "0.0", "1.0"]) + "\n")
    return root


@pytest.mark.parametrize("small", [True, False])
def test_chexpert_policies_blanks_and_frontal_filter(tmp_path, small):
    root = _chexpert(tmp_path, small)
    nan = math.nan
    raw = np.array([[1, -1, nan, 0, -1], [nan, nan, -1, 1, 0], [-1, 1, 1, -1, nan]], np.float32)
    expect = {"zeros": np.where(raw == -1, 0, np.nan_to_num(raw)), "ones": np.where(raw == -1, 1, np.nan_to_num(raw)),
              "ignore": np.where(raw == -1, np.nan, np.nan_to_num(raw))}
    for policy, want in expect.items():
        ds = open_dataset(root, split="train", uncertainty=policy)
        assert ds.class_names == FIVE and ds.task == "multilabel" and len(ds) == 3  # the lateral view is dropped
        np.testing.assert_array_equal(np.asarray(ds.labels), want)
        assert tuple(ds[0]["image"].shape) == (1, 12, 10)
    assert len(open_dataset(root, split="train", frontal_only=False)) == 4
    assert len(open_dataset(root, split="val")) == 1 and len(open_dataset(root)) == 4

    rnd = np.asarray(open_dataset(root, split="train", uncertainty="random", uncertainty_seed=5).labels)
    unc = raw == -1
    assert np.all((rnd[unc] >= 0.55) & (rnd[unc] <= 0.85)) and np.allclose(rnd[unc], np.round(rnd[unc], 2))
    np.testing.assert_array_equal(rnd[~unc], expect["zeros"][~unc])
    np.testing.assert_array_equal(rnd, np.asarray(open_dataset(root, split="train", uncertainty="random",
                                                               uncertainty_seed=5).labels))
    other = np.asarray(open_dataset(root, split="train", uncertainty="random", uncertainty_seed=6).labels)
    assert not np.array_equal(other[unc], rnd[unc])


def test_u_random_is_uniform_in_its_range_and_independent_of_the_other_rows():
    n = 4000
    raw = -np.ones((n, 1), np.float32)
    keys = [f"img{i}" for i in range(n)]
    v = apply_uncertainty(raw, "random", names=["Edema"], keys=keys, seed=0)[:, 0]
    assert v.min() >= 0.55 and v.max() <= 0.85 and abs(v.mean() - 0.70) < 0.01
    assert abs(np.mean(v < 0.625) - 0.25) < 0.03  # uniform: a quarter below the first quartile of [0.55, 0.85]
    sub = apply_uncertainty(raw[::7], "random", names=["Edema"], keys=keys[::7], seed=0)[:, 0]
    np.testing.assert_array_equal(sub, v[::7])
    with pytest.raises(ConfigError, match="uncertainty policy"):
        apply_uncertainty(raw, "u-maybe", names=["Edema"], keys=keys)


def test_chexpert_bad_value_and_missing_column(tmp_path):
    root = _chexpert(tmp_path)
    text = (root / "train.csv").read_text().replace(",0.0,-1.0\n", ",0.0,2.0\n", 1)
    (root / "train.csv").write_text(text)
    with pytest.raises(DataError, match=r"train\.csv.*row 2.*'Pleural Effusion'.*'2\.0'"):
        open_dataset(root, split="train")
    (root / "valid.csv").write_text("Path,Sex\nx.jpg,Male\n")
    with pytest.raises(DataError, match=r"valid\.csv.*Atelectasis"):
        open_dataset(root, split="val")


# ------------------------------------------------------------------------------------------ MedMNIST
def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{sp}_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for sp, n in
              (("train", 10), ("val", 3), ("test", 4))}
    arrays |= {f"{sp}_labels": rng.integers(0, 2, (n, 1)) for sp, n in (("train", 10), ("val", 3), ("test", 4))}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    ds = open_dataset({"layout": "medmnist", "root": str(tmp_path), "npz": "pneumoniamnist.npz"}, split="test")
    assert len(ds) == 4
    it = ds[2]
    torch.testing.assert_close(it["image"][0], torch.from_numpy(arrays["test_images"][2]).float() / 255, rtol=0,
                               atol=0)
    assert int(it["label"]) == int(arrays["test_labels"][2, 0])


# ---------------------------------------------------------------------------------- boxes -> masks
def test_boxes_csv_becomes_half_open_masks(tmp_path):
    for name in ("a", "b"):
        _png(tmp_path / "cls" / f"{name}.png", 10, size=(16, 12))
    (tmp_path / "boxes.csv").write_text("image,x0,y0,x1,y1\na,2,3,6,5\na,10,0,12,2\n")
    ds = open_dataset({"layout": "folder", "root": str(tmp_path), "boxes": str(tmp_path / "boxes.csv")})
    items = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    want = torch.zeros(1, 12, 16, dtype=torch.bool)
    want[0, 3:5, 2:6] = True
    want[0, 0:2, 10:12] = True
    assert torch.equal(items["cls/a"]["mask"], want) and bool(items["cls/a"]["has_mask"])
    assert items["cls/b"]["mask"].sum() == 0 and not bool(items["cls/b"]["has_mask"])


# --------------------------------------------------------------------------------------- bad input
def test_missing_and_empty_files_listed_in_a_csv(tmp_path):
    _png(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "d.csv").write_text("image,label\nok.png,a\nabsent.png,b\nempty.png,a\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    with pytest.raises(DataError, match=r"absent\.png.*file not found.*d\.csv row 3"):
        open_dataset(spec)
    ds = open_dataset(spec, on_error="skip")
    assert len(ds) == 1
    reasons = dict(ds.skipped)
    assert any("absent.png" in p and "file not found" in r for p, r in reasons.items())
    assert any("empty.png" in p and "empty file" in r for p, r in reasons.items())


def test_csv_without_a_needed_column(tmp_path):
    (tmp_path / "d.csv").write_text("filename_x,level\na.png,0\n")
    with pytest.raises(DataError, match=r"d\.csv.*no image column"):
        open_dataset({"layout": "csv", "root": str(tmp_path), "csv": "d.csv"})
    with pytest.raises(DataError, match=r"d\.csv"):
        open_dataset({"layout": "csv", "root": str(tmp_path), "csv": "d.csv", "image_column": "filename_x",
                      "label_column": "grade"})


def test_paths_leaving_the_root_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "ds"
    _png(tmp_path / "outside.png")
    _png(root / "in.png")
    (root / "d.csv").write_text("image,label\nin.png,a\n../outside.png,b\n")
    spec = {"layout": "csv", "root": str(root), "csv": "d.csv"}
    with pytest.raises(DataError, match=r"outside\.png.*leaves the dataset root"):
        open_dataset(spec)
    assert len(open_dataset({**spec, "allow_outside_root": True})) == 2
    # a symlink inside the root that points out of it is caught the same way
    (root / "cls").mkdir()
    (root / "cls" / "link.png").symlink_to(tmp_path / "outside.png")
    _png(root / "cls" / "real.png")
    ds = open_dataset({"layout": "folder", "root": str(root)}, on_error="skip")
    assert len(ds) == 1 and "leaves the dataset root" in ds.skipped[0][1]


def test_label_outside_the_class_list_in_a_folder(tmp_path):
    _png(tmp_path / "train" / "NORMAL" / "a.png")
    _png(tmp_path / "train" / "COVID" / "b.png")
    with pytest.raises(DataError, match=r"COVID.*not in the class list"):
        open_dataset({"layout": "folder", "root": str(tmp_path), "classes": ["NORMAL", "PNEUMONIA"]})


def test_undecodable_image_is_skipped_with_its_reason(tmp_path):
    _png(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _png(tmp_path / "b" / "other.png")
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match=r"bad\.png"):
        ds.validate() if hasattr(ds, "validate") else [ds[i] for i in range(len(ds))]
    ds = open_dataset(tmp_path, on_error="skip", validate=True)
    assert len(ds) == 2 and [Path(p).name for p, _ in ds.skipped] == ["bad.png"]
    assert {ds[i]["id"] for i in range(len(ds))} == {"a/good", "b/other"}


def test_missing_root_and_bad_spec(tmp_path):
    with pytest.raises(DataError, match=r"absent"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"nonsense"):
        open_dataset({"layout": "folder", "root": str(tmp_path), "nonsense": 1})
