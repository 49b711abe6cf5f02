"""Silent wrong results in the data layer: colliding ids, label values compared as text, 12-bit data
in 16-bit files, DICOM windows the spec could not set, skipped images replaced by others, mixed
channels / sizes unreported, CheXpert without test.csv. Each test checks numbers, not shapes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file

from medxai.cli import main
from medxai.data import dataset_info, load_image, open_dataset
from medxai.data.layouts import _hash_split
from medxai.errors import ConfigError, DataError
from medxai.evaluate import predictions_csv

CT = Path(get_testdata_file("CT_small.dcm"))
RTDOSE = CT.parent / "rtdose.dcm"
SKIMAGE_DATA = Path(__import__("skimage.data", fromlist=["x"]).__file__).parent


def _png(path: Path, value: int = 128, size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]) if mode == "L" else (size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _png16(path: Path, arr: np.ndarray, sbit: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(arr.astype(np.uint16)).save(path, pnginfo=info)
    return path


def _ids(ds) -> list[str]:
    return [ds[i]["id"] for i in range(len(ds))]


# ------------------------------------------------------------------------------------- 1. ids
def test_folder_ids_are_paths_and_never_collide(tmp_path):
    _png(tmp_path / "test" / "LESION" / "img050.png", 200)
    _png(tmp_path / "test" / "NORMAL" / "img050.png", 10)
    _png(tmp_path / "train" / "NORMAL" / "img050.png", 20)
    ds = open_dataset(tmp_path, split="test")
    assert sorted(ds.ids) == ["test/LESION/img050", "test/NORMAL/img050"]
    by_id = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert round(float(by_id["test/LESION/img050"]["image"].mean()) * 255) == 200
    assert int(by_id["test/LESION/img050"]["label"]) == 0 and int(by_id["test/NORMAL/img050"]["label"]) == 1
    assert len(set(open_dataset(tmp_path).ids)) == 3


def test_folder_seeded_split_keeps_its_old_hash_key(tmp_path):
    for i in range(20):
        _png(tmp_path / ("a" if i % 2 else "b") / f"{i:02d}.png", i)
    spec = {"layout": "folder", "root": str(tmp_path), "test_fraction": 0.3, "split_seed": 4}
    got = set(open_dataset(spec, split="test").ids)
    want = {f"{'a' if i % 2 else 'b'}/{i:02d}" for i in range(20) if _hash_split(f"{i:02d}", 4, 0.0, 0.3) == "test"}
    assert got == want and 0 < len(got) < 20


def test_csv_ids_repeating_are_refused(tmp_path):
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png", i)
    (tmp_path / "d.csv").write_text("pid,image,label\nP1,img/0.png,a\nP2,img/1.png,b\nP1,img/2.png,a\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    assert open_dataset(spec).ids == ["img/0", "img/1", "img/2"]  # the image path relative to the root
    with pytest.raises(DataError, match=r"d\.csv: id 'P1' \(column 'pid'\) repeats: rows 2 and 4"):
        open_dataset({**spec, "id_column": "pid"})
    (tmp_path / "e.csv").write_text("image,label\nimg/0.png,a\nimg/1.png,b\nimg/0.png,b\n")
    with pytest.raises(DataError, match=r"0\.png: id 'img/0' is also the id of .*0\.png \(rows 2 and 4 of e\.csv\)"):
        open_dataset({**spec, "csv": "e.csv"})


def test_predictions_csv_writes_path_and_true_class():
    text = predictions_csv(["x/a", "y/a"], np.array([1, 0]), np.array([[0.25, 0.75], [0.9, 0.1]]), ["n", "p"],
                           "binary", paths=["/d/x/a.png", "/d/y/a.png"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"id": "x/a", "path": "/d/x/a.png", "truth": "1", "true_class": "p", "pred": "1",
                       "score_n": "0.25", "score_p": "0.75"}
    assert rows[1]["true_class"] == "n" and rows[1]["path"] == "/d/y/a.png"
    multi = predictions_csv(["a"], np.array([[1.0, 0.0]]), np.array([[0.5, 0.25]]), ["x", "y"], "multilabel",
                            paths=["/d/a.png"])
    assert next(csv.DictReader(io.StringIO(multi)))["path"] == "/d/a.png"
    with pytest.raises(ValueError, match="1 paths for 2 ids"):
        predictions_csv(["a", "b"], np.array([0, 1]), np.eye(2), ["n", "p"], "binary", paths=["/d/a.png"])


# ------------------------------------------------------------------------------- 2. class labels
def test_numeric_labels_compare_as_numbers(tmp_path):
    for i in range(5):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "d.csv").write_text("image,label\n0.png,2.0\n1.png,2\n2.png,10\n3.png,0\n4.png,1\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    ds = open_dataset(spec)
    assert ds.class_names == ["0", "1", "2", "10"] and np.asarray(ds.labels).tolist() == [2, 2, 3, 0, 1]
    (tmp_path / "d.csv").write_text("image,label\n0.png,2.0\n1.png,7\n")
    with pytest.raises(DataError, match=r"d\.csv: row 3: column 'label': label '7' is not in the class list"):
        open_dataset({**spec, "classes": [0, 1, 2, 3, 4], "task": "ordinal"})
    ds = open_dataset({**spec, "classes": ["0", "1", "2", "3", "4"], "other_classes": "drop"})
    assert np.asarray(ds.labels).tolist() == [2] and ds.class_names == ["0", "1", "2", "3", "4"]
    assert ds.notes == ["1 row(s) with labels outside the class list dropped (other_classes: drop)"]
    with pytest.raises(ConfigError, match=r"classes: '2\.0' repeats '2'"):
        open_dataset({**spec, "classes": ["1", "2", "2.0"]})


def test_missing_label_markers_are_no_class(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    (tmp_path / "d.csv").write_text("image,dx\n0.png,mel\n1.png,NA\n2.png,nv\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    with pytest.raises(DataError, match=r"row 3: column 'dx': no label \(value 'NA'\)"):
        open_dataset(spec)
    ds = open_dataset(spec, on_error="skip")
    assert ds.class_names == ["mel", "nv"] and len(ds) == 2


def test_numeric_class_folders_sort_numerically_and_match_declared_numbers(tmp_path):
    for grade in ("0", "1", "2", "10"):
        _png(tmp_path / grade / "a.png", int(grade))
    ds = open_dataset(tmp_path)
    assert ds.class_names == ["0", "1", "2", "10"]
    assert dict(zip(ds.ids, np.asarray(ds.labels).tolist(), strict=True)) == {"0/a": 0, "1/a": 1, "2/a": 2, "10/a": 3}
    ds = open_dataset({"layout": "folder", "root": str(tmp_path), "classes": ["0.0", "1", "2", "10", "3"]})
    assert dict(zip(ds.ids, np.asarray(ds.labels).tolist(), strict=True))["0/a"] == 0


# ---------------------------------------------------------------------------------- 3. bit depth
def test_12bit_data_in_a_16bit_png(tmp_path):
    ramp = np.linspace(0, 4095, 48).round().reshape(6, 8)
    f = _png16(tmp_path / "cls" / "a.png", ramp)
    assert float(load_image(f).max()) == pytest.approx(4095 / 65535)  # today's: almost black
    np.testing.assert_allclose(load_image(f, bits=12)[..., 0], ramp / 4095, atol=1e-7)
    with pytest.raises(DataError, match=r"a\.png.*no significant bits.*set bits: 12 or bits: 16"):
        load_image(f, bits="auto")
    g = _png16(tmp_path / "cls" / "b.png", ramp, sbit=12)
    assert float(load_image(g, bits="auto").max()) == 1.0
    over = _png16(tmp_path / "over" / "c.png", np.full((2, 2), 5000))
    with pytest.raises(DataError, match=r"c\.png: value 5000 exceeds the 12-bit maximum 4095"):
        load_image(over, bits=12)
    with pytest.raises(DataError, match=r"bits: 12 but the image is stored at 8 bits"):
        load_image(SKIMAGE_DATA / "microaneurysms.png", bits=12)
    ds = open_dataset({"layout": "folder", "root": str(tmp_path), "bits": 12, "classes": ["cls"],
                       "other_classes": "drop"})
    assert [round(float(ds[i]["image"].max()), 6) for i in range(len(ds))] == [1.0, 1.0]


def test_info_flags_12bit_data_in_16bit_files(tmp_path):
    _png16(tmp_path / "cls" / "a.png", np.linspace(0, 4000, 48).round().reshape(6, 8))
    info = dataset_info(tmp_path, decode=True)
    assert info["problems"] == [{"path": str((tmp_path / "cls" / "a.png").resolve()),
                                 "reason": "max 0.06 of the range: 12-bit data in a 16-bit file? set bits: 12"}]
    assert dataset_info({"root": str(tmp_path), "bits": 12}, decode=True)["problems"] == []


# ------------------------------------------------------------------------------ 4. DICOM windows
def test_ct_window_through_a_dataset(tmp_path):
    shutil.copy(CT, tmp_path / "ct.dcm")
    (tmp_path / "d.csv").write_text("image,label\nct.dcm,a\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    assert float(open_dataset(spec)[0]["image"].std()) < 0.02  # no VOI: the full 16-bit signed range
    assert float(open_dataset({**spec, "window": "minmax"})[0]["image"].std()) > 0.1
    lung = open_dataset({**spec, "window": "lung"})[0]["image"][0].numpy()
    np.testing.assert_array_equal(lung, load_image(CT, window=(-600, 1500))[..., 0])
    soft = open_dataset({**spec, "window": [40, 400]})[0]["image"][0].numpy()
    np.testing.assert_array_equal(soft, load_image(CT, window="mediastinum")[..., 0])
    with pytest.raises(ConfigError, match="window"):
        open_dataset({**spec, "window": "liver"})
    probs = dataset_info(spec, decode=True)["problems"]
    assert len(probs) == 1 and probs[0]["path"].endswith("ct.dcm") and "set window:" in probs[0]["reason"]
    assert dataset_info({**spec, "window": "minmax"}, decode=True)["problems"] == []


def test_dicom_frame_through_a_dataset(tmp_path):
    shutil.copy(RTDOSE, tmp_path / "dose.dcm")
    _png(tmp_path / "p.png", 77)
    (tmp_path / "d.csv").write_text("image,label\ndose.dcm,a\np.png,b\n")
    spec = {"layout": "csv", "root": str(tmp_path), "csv": "d.csv"}
    with pytest.raises(DataError, match="multi-frame"):
        open_dataset(spec)[0]
    ds = open_dataset({**spec, "frame": 7})
    np.testing.assert_array_equal(ds[0]["image"][0].numpy(), load_image(RTDOSE, frame=7)[..., 0])
    assert round(float(ds[1]["image"].mean()) * 255) == 77  # frame applies to DICOM files only


# --------------------------------------------------------------------------------------- 5. skip
def test_skip_drops_undecodable_images_and_never_substitutes(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        _png(tmp_path / ("A" if i % 2 else "B") / f"img{i:03d}.png", 10 * i)
    bad = tmp_path / "A" / "img003.png"
    bad.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    ds = open_dataset(tmp_path, on_error="skip")
    ids = _ids(ds)
    assert len(ds) == 5 and len(set(ids)) == 5 and "A/img003" not in ids
    assert [Path(p).name for p, _ in ds.skipped] == ["img003.png"]
    for i in range(len(ds)):  # each item is its own file
        it = ds[i]
        assert round(float(it["image"].mean()) * 255) == 10 * int(it["id"][-3:])
    lazy = open_dataset(tmp_path, on_error="skip", validate=False)
    j = lazy.ids.index("A/img003")
    with pytest.raises(DataError, match=r"img003\.png"):
        lazy[j]


# ------------------------------------------------------------------------- 6. mixed channels, sizes
def test_info_reports_mixed_channels_and_sizes(tmp_path, capsys):
    for i in range(4):
        _png(tmp_path / "c" / f"g{i}.png", 50)
    _png(tmp_path / "c" / "rgb.png", 50, mode="RGB")
    _png(tmp_path / "c" / "big.png", 50, size=(16, 12))
    reasons = [p["reason"] for p in dataset_info(tmp_path, decode=True)["problems"]]
    assert reasons == ["1 image(s) with channel count 3 where 5 of 6 have 1 (e.g. rgb.png); set channels: 1 or 3",
                       "1 image(s) with size 16x12 where 5 of 6 have 8x6 (e.g. big.png); set size: (resize to one "
                       "size)"]
    main(["data", "info", str(tmp_path)])
    out = capsys.readouterr().out
    assert "problems: not checked (run with --decode)" in out and "none found" not in out
    main(["data", "info", str(tmp_path), "--json"])
    assert json.loads(capsys.readouterr().out)["decoded"] is False


# ------------------------------------------------------------------------------------ 7. CheXpert
FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def _chexpert(tmp_path: Path, patients: int = 12) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    head = ",".join(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *FIVE])
    lines = [head]
    for p in range(1, patients + 1):
        for study in (1, 2):
            rel = f"train/patient{p:05d}/study{study}/view1_frontal.jpg"
            _png(root / rel, 90, size=(4, 4))
            lines.append(f"{root.name}/{rel},Male,60,Frontal,AP,1.0,0.0,,0.0,1.0")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    vrel = "valid/patient64541/study1/view1_frontal.jpg"
    _png(root / vrel, 90, size=(4, 4))
    (root / "valid.csv").write_text(f"{head}\n{root.name}/{vrel},Female,50,Frontal,PA,0.0,1.0,0.0,0.0,1.0\n")
    return root


def test_chexpert_test_split_needs_a_mapping(tmp_path):
    root = _chexpert(tmp_path)
    with pytest.raises(ConfigError, match=r"only train\.csv / valid\.csv .*splits: \{test: valid\}.*test_from: train"):
        open_dataset(root, split="test")
    ds = open_dataset(root, split="test", splits={"test": "valid"})
    assert ds.ids == ["valid/patient64541/study1/view1_frontal"] and ds.split_source == "valid.csv"
    with pytest.raises(ConfigError, match=r"split 'val'"):  # valid.csv serves test now, not val too
        open_dataset(root, split="val", splits={"test": "valid"})
    everything = open_dataset(root, splits={"test": "valid"})
    assert everything.splits.count("test") == 1 and everything.splits.count("train") == 24
    assert everything.split_source == "train: train.csv; test: valid.csv"


def test_chexpert_test_from_train_is_seeded_by_patient(tmp_path):
    root = _chexpert(tmp_path)
    spec = {"root": str(root), "test_from": "train", "test_fraction": 0.25, "split_seed": 3}
    test, train = open_dataset(spec, split="test"), open_dataset(spec, split="train")
    patients = {sp: {i.split("/")[1] for i in d.ids} for sp, d in (("test", test), ("train", train))}
    want = {f"patient{p:05d}" for p in range(1, 13) if _hash_split(f"patient{p:05d}", 3, 0.0, 0.25) == "test"}
    assert patients["test"] == want and 0 < len(want) < 12 and not patients["test"] & patients["train"]
    assert len(test) == 2 * len(want) and len(test) + len(train) == 24  # both studies of a patient together
    assert test.split_source == "train.csv (seeded 25% by patient, split_seed 3)"
    assert train.split_source == "train.csv (without the seeded 25% test patients, split_seed 3)"
    assert len(open_dataset(spec, split="val")) == 1
    with pytest.raises(ConfigError, match="test_fraction"):
        open_dataset({**spec, "test_fraction": 0.0}, split="test")


def test_audit_of_chexpert_small_states_where_the_test_split_came_from(tmp_path):
    """CheXpert-v1.0-small has no test.csv: the example's mapping audits it and the report says so."""
    import yaml as _yaml

    from medxai.pipeline.config import load_config
    from medxai.pipeline.data import build_datasets

    root = _chexpert(tmp_path, patients=12)
    example = _yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "chexpert-multilabel.yaml")
                              .read_text())
    spec = {**example["data"]["spec"], "root": str(root), "test_fraction": 0.25, "uncertainty": "zeros"}
    cfg = load_config({"models": [{"name": "m"}], "data": {"spec": spec, "use": "real"}})
    ds, desc = build_datasets(cfg.data)
    assert len(ds["test"]) > 0 and len(ds["val"]) == 1
    assert "test split from train.csv (seeded 25% by patient, split_seed 0)" in desc["description"]
    # and the whole audit runs on it and says so in the report
    from medxai.pipeline.audit import run_audit

    raw = {"name": "cx", "data": {"spec": spec, "use": "real", "size": 16},
           "models": [{"name": "m", "arch": "small-cnn", "train": {"epochs": 1, "batch_size": 8}}],
           "attack": {"enabled": False}, "corruption": {"enabled": False},
           "explain": {"methods": ["saliency"], "n_show": 2, "n_score": 4},
           "score": {"metrics": ["sparseness"], "sanity": False, "n_boot": 10}, "evaluation": {"n_boot": 10}}
    res = run_audit(load_config(raw), tmp_path / "run")
    assert "test split from train.csv (seeded 25% by patient" in res.report["data"]["description"]


def test_folder_audit_with_colliding_file_names_compares_every_pair(tmp_path):
    """LESION/img0.png and NORMAL/img0.png once shared the id img0: paired comparisons lost half the
    images (n 0, n_dropped 10). With path ids every image is paired."""
    import torch
    from torch import nn

    import medxai

    rng = np.random.default_rng(0)
    for cls, bright in (("LESION", 200), ("NORMAL", 60)):
        for i in range(6):
            arr = (rng.random((16, 16)) * 50).astype(np.uint8)
            arr[4:10, 4:10] = bright
            path = tmp_path / "data" / "test" / cls / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    b = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    res = medxai.audit({"a": a, "b": b}, str(tmp_path / "data"), out=tmp_path / "run",
                       attack={"enabled": False}, corruption={"enabled": False}, intervention={"enabled": False},
                       explain={"methods": ["saliency"], "n_score": 12, "n_show": 2},
                       score={"metrics": ["sparseness"], "sanity": False, "n_boot": 10, "compare": [["b", "a"]]},
                       evaluation={"n_boot": 10})
    ids = [img["id"] for img in res.report["explanations"]["images"]]
    assert len(set(ids)) == len(ids) and any(i.startswith("test/LESION/") for i in ids)
    (cmp,) = [c for c in res.report["scores"]["comparisons"] if c["metric"] == "sparseness"]
    assert cmp["n"] == 12 and cmp["n_dropped"] == 0
