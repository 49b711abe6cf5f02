"""Hostile files and faults (SECURITY.md): pickles that run code, YAML tags and alias bombs, paths
that leave the dataset root or the output folder, decompression bombs and absurd DICOM sizes,
a non-finite loss through the command line, non-finite input to explainers and attacks."""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import pickle
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medxai.models as M
from medxai.cli import main as cli_main
from medxai.data import load_image, open_dataset
from medxai.errors import CheckpointError, ConfigError, DataError, InputError
from medxai.train import OBJECTIVES, load_run, read_checkpoint
from medxai.train.objectives import Standard

SRC = Path(__file__).parents[1] / "src" / "medxai"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: on 2 shared cores more threads spin


# ============================================================================ pickles
class _System:
    """Unpickling calls os.system(command): a shell runs if a loader executes pickled code."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Exec:
    """Unpickling calls builtins.exec(source)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (builtins.exec, (self.source,))


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The same payloads in the zip format of torch.save and as a plain (legacy) pickle, under every
    name a checkpoint loader could be handed."""
    sd = M.create("resnet8", 2).state_dict()
    payloads = {"system": _System(f"touch {marker}"),
                "exec": _Exec(f"open({str(marker)!r}, 'w').write('pwned')")}
    files = {}
    for kind, payload in payloads.items():
        zip_path = tmp_path / f"{kind}.pth"
        torch.save({"state_dict": sd, "extra": payload}, zip_path)
        files[f"{kind}-zip.pth"] = zip_path
        for suffix in (".pt", ".safetensors"):
            p = tmp_path / f"{kind}-legacy{suffix}"
            p.write_bytes(pickle.dumps({"model": payload}, protocol=2))
            files[p.name] = p
    assert not marker.exists()
    return files


def test_pickles_that_run_code_are_refused_by_every_weight_loader(tmp_path):
    marker = tmp_path / "pwned"
    files = _evil_files(tmp_path, marker)
    model = M.create("resnet8", 2)
    for path in files.values():
        with pytest.raises(CheckpointError) as err:
            M.load_weights(model, path)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg
        if path.suffix == ".safetensors":
            assert "not a readable safetensors file" in msg
        else:
            assert "refused" in msg
        with pytest.raises(CheckpointError):
            M.create("resnet8", 2, pretrained=path)
        with pytest.raises(CheckpointError):
            M.read_state_dict(path)
    # the message names the callable the pickle would have called
    with pytest.raises(CheckpointError, match=r"refused: the file pickles a call to .*system.*could run code"):
        M.read_state_dict(files["system-zip.pth"])
    with pytest.raises(CheckpointError, match=r"pickles a call to .*exec"):
        M.read_state_dict(files["exec-zip.pth"])
    # the ViT study's initialisation from DINO / MAE files goes through the same reader
    from medxai.models.vit_presets import init_vit

    vit = M.create("vit-ti8", 2, in_chans=1)
    for path in (files["system-zip.pth"], files["exec-legacy.pt"]):
        with pytest.raises(CheckpointError):
            init_vit(vit, "dino", path)
    assert not marker.exists()


def test_pickle_disguised_as_a_medxai_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    files = _evil_files(tmp_path, marker)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"format": "medxai.model/1", "task": "binary",
                                                "class_names": ["a", "b"],
                                                "model": {"name": "small-cnn", "num_classes": 2, "in_chans": 1}}))
    for which in ("best", "last"):
        (run / f"{which}.safetensors").write_bytes(files["system-legacy.safetensors"].read_bytes())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(run / "last.safetensors")
    for which in ("best", "last"):
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load_run(run, which=which)
    assert not marker.exists()


def test_train_command_refuses_a_malicious_pretrained_file(tmp_path, capsys):
    marker = tmp_path / "pwned"
    files = _evil_files(tmp_path, marker)
    from medxai.data import write_synthetic

    write_synthetic("cxr-pneumonia", tmp_path / "study", {"train": 8, "val": 4}, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: evil\nout: {tmp_path / 'runs'}\n"
                   f"model: {{name: resnet8, pretrained: {files['system-zip.pth']}, normalize: none}}\n"
                   f"data: {{train: {tmp_path / 'study'}}}\ntrain: {{epochs: 1, device: cpu}}\n")
    with pytest.raises(SystemExit) as ex:
        cli_main(["-q", "train", "--config", str(cfg)])
    assert ex.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refused" in err and "could run code" in err
    assert not marker.exists()
    assert not (tmp_path / "runs" / "evil" / "last.safetensors").exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_source_has_no_unsafe_deserialisation_or_evaluation():
    """Every torch.load is weights_only=True; no pickle / marshal / yaml.load / eval / exec /
    shell=True / np.load(allow_pickle=True) anywhere in medxai."""
    problems, torch_loads = [], 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and name == "load":
                torch_loads += 1
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "marshal", "dill", "cloudpickle") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                problems.append(f"{where}: yaml.{name}")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile"):
                problems.append(f"{where}: {name}()")
            a = kw.get("allow_pickle")
            if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                problems.append(f"{where}: allow_pickle not False")
            s = kw.get("shell")
            if s is not None and not (isinstance(s, ast.Constant) and s.value is False):
                problems.append(f"{where}: shell=True")
    assert torch_loads >= 1  # the one reader of .pth / .pt files is seen
    assert problems == []


# ============================================================================ YAML
PWN_TAG = "!!python/object/apply:os.system ['touch {marker}']"


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def test_yaml_tags_and_alias_bombs_are_refused_by_every_config_reader(tmp_path):
    from medxai.pipeline.config import load_config
    from medxai.train.config import load_run_config

    marker = tmp_path / "pwned"
    tag = PWN_TAG.format(marker=marker)
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "a" / "x.png")
    cases = {
        "train-tag": (load_run_config, f"name: {tag}\nmodel: {{name: small-cnn}}\ndata: {{train: x}}\n", ConfigError),
        "train-bomb": (load_run_config, "model:\n  name: small-cnn\n  params:\n" + _indent(_bomb(), 4)
                       + "\ndata: {train: x}\n", ConfigError),
        "train-cycle": (load_run_config, "model: {name: small-cnn, params: {p: &p [*p]}}\ndata: {train: x}\n",
                        ConfigError),
        "audit-tag": (load_config, f"models:\n  - name: m\n    arch: {tag}\n", ConfigError),
        "audit-bomb": (load_config, "models:\n  - name: m\n    options:\n" + _indent(_bomb(), 6) + "\n", ConfigError),
        "audit-cycle": (load_config, "evaluation: &e {n_boot: 10, me: *e}\nmodels: [{name: m}]\n", ConfigError),
        "spec-tag": (open_dataset, f"layout: folder\nroot: {tag}\n", DataError),
        "spec-bomb": (open_dataset, "layout: folder\nfindings:\n" + _indent(_bomb(), 2) + "\n", DataError),
    }
    for name, (reader, text, error) in cases.items():
        path = (root if name.startswith("spec") else tmp_path) / f"{name}.yaml"
        path.write_text(text)
        t0 = time.perf_counter()
        with pytest.raises(error) as err:
            reader(path)
        assert time.perf_counter() - t0 < 2.0, name  # refused while parsing, not after expanding
        assert str(path) in str(err.value), name
        if "bomb" in name or "cycle" in name:
            assert "alias bomb" in str(err.value), name
    # --set values go through the same reader
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config({"models": [{"name": "m"}]}, ["evaluation.x=&a [*a]"])
    with pytest.raises(ConfigError, match=r"--set models\.x\.name"):
        load_config({"models": [{"name": "m"}]}, ["models.x.name=other"])
    assert not marker.exists()


# ============================================================================ paths
def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_csv_and_chexpert_paths_leaving_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    _png(root / "in.png")
    _png(tmp_path / "secret.png")
    _png(tmp_path / "CheXpert-v1.0-small" / "secret.png")
    (root / "labels.csv").write_text("image,label\nin.png,a\n../secret.png,b\n"
                                     f"{tmp_path / 'secret.png'},b\nsub/../../secret.png,a\n")
    with pytest.raises(DataError, match=r"secret\.png.*leaves the dataset root"):
        open_dataset(root / "labels.csv")
    ds = open_dataset(root / "labels.csv", on_error="skip")
    assert [r.rel for r in ds.records] == ["in.png"]
    assert len(ds.skipped) == 3 and all("leaves the dataset root" in why for _, why in ds.skipped)
    # explicitly allowed by the caller
    ds = open_dataset(root / "labels.csv", allow_outside_root=True)
    assert len(ds) == 4 and ds[1]["image"].shape == (1, 8, 8)
    # CheXpert Path column
    head = "Path,Frontal/Lateral,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\n"
    (root / "train.csv").write_text(head + "in.png,Frontal,1,,,,\n../secret.png,Frontal,1,,,,\n"
                                    "CheXpert-v1.0-small/../../secret.png,Frontal,0,,,,\n")
    spec = {"layout": "chexpert", "root": str(root)}
    with pytest.raises(DataError, match="leaves the dataset root"):
        open_dataset(spec)
    ds = open_dataset(spec, on_error="skip")
    assert [r.rel for r in ds.records] == ["in.png"] and len(ds.skipped) == 2


def test_nul_bytes_and_overlong_names_in_a_csv_are_bad_records_not_crashes(tmp_path):
    root = tmp_path / "root"
    _png(root / "in.png")
    (root / "labels.csv").write_text(f"image,label\nin.png,a\nin\x00.png,b\n{'x' * 300}.png,a\n{'d/' * 3000}x.png,b\n")
    with pytest.raises(DataError):
        open_dataset(root / "labels.csv")
    ds = open_dataset(root / "labels.csv", on_error="skip")
    assert len(ds) == 1 and len(ds.skipped) == 3
    assert any("NUL" in why for _, why in ds.skipped)


def test_a_dataset_manifest_cannot_widen_the_readers_guards(tmp_path):
    root = tmp_path / "root"
    _png(root / "in.png")
    _png(tmp_path / "secret.png")
    (root / "labels.csv").write_text("image,label\nin.png,a\n../secret.png,b\n")
    (tmp_path / "outside.csv").write_text("image,label\nroot/in.png,a\nsecret.png,b\n")
    base = {"layout": "csv", "csv": "labels.csv", "classes": ["a", "b"]}
    for extra, needle in (({"allow_outside_root": True}, "may not set allow_outside_root"),
                          ({"max_pixels": 10**12}, "may not set max_pixels"),
                          ({"root": "/"}, "may not set root"),
                          ({"csv": "../outside.csv"}, "csv='../outside.csv' leaves the dataset folder"),
                          ({"mask_dir": "/etc"}, "mask_dir='/etc' leaves"),
                          ({"extra_mask_dirs": {"m": "../.."}}, "extra_mask_dirs.m"),
                          ({"image_dir": ["ok", "../../x"]}, "image_dir")):
        (root / "medxai.json").write_text(json.dumps({"format": "medxai-dataset", "spec": {**base, **extra}}))
        with pytest.raises(DataError, match=needle):
            open_dataset(root)
        with pytest.raises(DataError, match=needle):
            open_dataset(root / "medxai.json")
    # the plain manifest works, still refusing the CSV's ../ row; the caller may allow it
    (root / "medxai.json").write_text(json.dumps({"format": "medxai-dataset", "spec": base}))
    assert len(open_dataset(root, on_error="skip")) == 1
    assert len(open_dataset(root, allow_outside_root=True)) == 2


def test_names_from_configs_cannot_leave_the_output_folder(tmp_path):
    from medxai.pipeline.config import load_config
    from medxai.train.config import load_run_config

    for bad in ("../../escape", "a/b", "..", ".hidden", "x\x00y", "a|b", "<script>"):
        with pytest.raises(ConfigError, match="model name"):
            load_config({"models": [{"name": bad}]})
        with pytest.raises(ConfigError, match="method"):
            load_config({"models": [{"name": "m"}], "explain": {"methods": ["saliency", bad]}})
        with pytest.raises(ConfigError, match="method"):
            load_config({"models": [{"name": "m"}], "score": {"sanity_methods": [bad]}})
        cfg = tmp_path / "train.yaml"
        cfg.write_text(json.dumps({"name": bad, "out": str(tmp_path / "out"), "model": {"name": "small-cnn"},
                                   "data": {"train": "x"}}))
        with pytest.raises(ConfigError, match="name"):
            load_run_config(cfg)
    ok = load_config({"models": [{"name": "robust-first_layers.v2+ft"}], "explain": {"methods": ["ig_uniform"]}})
    assert ok.models[0].name == "robust-first_layers.v2+ft"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]  # nothing else was written


# ============================================================================ pixel limits
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_zlib_bomb(side: int) -> bytes:
    """A real, complete PNG of side x side black pixels: ~side^2 bytes inflate from a few hundred KB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one gray byte per pixel
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_zlib_bomb(11000))  # 121 Mpx (121 MB inflated, 484 MB as float32)
    assert bomb.stat().st_size < 400_000
    # the same construction at a small size is a valid image: the bomb is a real PNG
    small = tmp_path / "small.png"
    small.write_bytes(_png_zlib_bomb(64))
    assert load_image(small).shape == (64, 64, 1)
    rss0, t0 = _rss_mb(), time.perf_counter()
    with pytest.raises(DataError, match=r"exceeds the limit of 100000000"):
        load_image(bomb)
    with pytest.raises(DataError, match="exceeds the limit"):
        load_image(small, max_pixels=4095)
    assert time.perf_counter() - t0 < 1.0
    assert _rss_mb() - rss0 < 50  # nothing was inflated
    # JPEG and TIFF whose headers claim 60000 x 60000 pixels
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    jpg = bytearray(buf.getvalue())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "huge.jpg").write_bytes(bytes(jpg))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="TIFF")
    tif = bytearray(buf.getvalue())
    assert tif[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", tif[4:8])
    (n,) = struct.unpack("<H", tif[ifd:ifd + 2])
    for e in range(ifd + 2, ifd + 2 + 12 * n, 12):  # ImageWidth, ImageLength := 60000 (LONG)
        if struct.unpack("<H", tif[e:e + 2])[0] in (256, 257):
            tif[e + 2:e + 12] = struct.pack("<HII", 4, 1, 60000)
    (tmp_path / "huge.tif").write_bytes(bytes(tif))
    for name in ("huge.jpg", "huge.tif"):
        with pytest.raises(DataError, match=r"refused: .*3600000000 pixels\)? exceeds"):
            load_image(tmp_path / name)
    # the dataset's max_pixels option reaches the decoder
    _png(tmp_path / "ds" / "a" / "x.png", size=40)
    ds = open_dataset({"layout": "folder", "root": str(tmp_path / "ds"), "max_pixels": 1000})
    with pytest.raises(DataError, match="exceeds the limit of 1000"):
        ds[0]
    assert _rss_mb() - rss0 < 50


def test_dicom_with_absurd_rows_columns_or_frames_is_refused(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("MR_small.dcm"))
    rss0 = _rss_mb()
    for rows, cols, frames in ((65535, 65535, None), (60000, 2000, None), (64, 64, 1_000_000), (64, 64, "2147483647")):
        ds = pydicom.dcmread(src)
        ds.Rows, ds.Columns = rows, cols
        if frames is not None:
            ds.NumberOfFrames = frames
        f = tmp_path / f"absurd-{rows}-{cols}-{frames}.dcm"
        ds.save_as(f)
        with pytest.raises(DataError, match="exceeds the limit") as err:
            load_image(f)
        assert err.value.path == str(f)
    ds = pydicom.dcmread(src)
    ds.Rows = 0
    ds.save_as(tmp_path / "zero.dcm")
    with pytest.raises(DataError, match="no pixels"):
        load_image(tmp_path / "zero.dcm")
    assert _rss_mb() - rss0 < 50


def test_dicom_whose_header_makes_pixels_non_finite_is_refused(tmp_path):
    """Found by the structure-aware fuzz target: a NaN / Inf RescaleSlope or Window made
    load_image return NaN pixels (np.clip keeps NaN) instead of refusing the file."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("MR_small.dcm"))
    for i, attrs in enumerate(({"RescaleSlope": "nan", "RescaleIntercept": "0"},
                               {"RescaleSlope": "1e400", "RescaleIntercept": "0"},
                               {"RescaleSlope": "1", "RescaleIntercept": "-inf"},
                               {"WindowCenter": "nan", "WindowWidth": "nan"})):
        ds = pydicom.dcmread(src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns that these values are invalid DS
            for k, v in attrs.items():
                setattr(ds, k, v)
            ds.save_as(tmp_path / f"nan{i}.dcm")
        with pytest.raises(DataError, match=r"NaN or Inf|degenerate"):
            load_image(tmp_path / f"nan{i}.dcm")
    assert np.isfinite(load_image(src)).all()


# ============================================================================ non-finite loss (CLI)
class _NanAtStep(Standard):
    """Standard training whose forward is fed NaN at one (epoch, step), counted from 1: the
    objective then produces a non-finite loss exactly there."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def train_step(self, ctx, x, y):
        if (ctx.epoch + 1, ctx.step + 1) == (self.epoch, self.step):
            x = x * float("nan")
        return super().train_step(ctx, x, y)


if "test-nan-at-step" not in OBJECTIVES:
    OBJECTIVES.add("test-nan-at-step", _NanAtStep)


def test_train_command_stops_on_a_nan_loss_naming_epoch_and_step_keeping_the_last_checkpoint(tmp_path, capsys):
    from medxai.data import write_synthetic

    write_synthetic("cxr-pneumonia", tmp_path / "study", {"train": 16, "val": 4}, size=32, seed=0)

    def config(name: str, epochs: int, objective: str) -> Path:
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"name: {name}\nout: {tmp_path / 'runs'}\nmodel: {{name: small-cnn, normalize: none}}\n"
                     f"data: {{train: {tmp_path / 'study'}}}\n"
                     f"train: {{epochs: {epochs}, batch_size: 8, lr: 0.01, seed: 2, device: cpu, "
                     f"objective: {objective}}}\n")
        return p

    with pytest.raises(SystemExit) as ex:
        cli_main(["-q", "train", "--config", str(config("nan", 3, "{name: test-nan-at-step, epoch: 2, step: 2}"))])
    assert ex.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "non-finite training loss (nan) at epoch 2, step 2" in err
    assert "last good checkpoint kept" in err and "last.safetensors" in err
    run = tmp_path / "runs" / "nan"
    kept = read_checkpoint(run / "last.safetensors")
    assert kept.get("train")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (run / "summary.json").exists()
    assert "non-finite training loss" in (run / "train.log").read_text()
    # the kept checkpoint is bitwise the one of a clean one-epoch run (scheduler none: same updates)
    cli_main(["-q", "train", "--config", str(config("clean", 1, "{name: standard}"))])
    ref = read_checkpoint(tmp_path / "runs" / "clean" / "last.safetensors")
    assert kept.model_state.keys() == ref.model_state.keys()
    assert all(torch.equal(kept.model_state[k], ref.model_state[k]) for k in ref.model_state)
    for which in ("best",):
        a = read_checkpoint(run / f"{which}.safetensors").model_state
        b = read_checkpoint(tmp_path / "runs" / "clean" / f"{which}.safetensors").model_state
        assert all(torch.equal(a[k], b[k]) for k in b)


# ============================================================================ non-finite input
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad", "gradcam", "occlusion"])
def test_explainers_refuse_nan_and_inf_pixels(method):
    from medxai.explain import explain

    model = M.create("small-cnn", 2, in_chans=1, normalize="none").eval()
    fast = {"integrated_gradients": {"n_steps": 2}, "smoothgrad": {"n_samples": 2},
            "occlusion": {"window": 8, "stride": 8}}.get(method, {})
    x = torch.rand(2, 1, 16, 16)
    assert explain(model, x, method, 0, **fast).shape == (2, 1, 16, 16)
    for bad in (float("nan"), float("inf"), float("-inf")):
        xb = x.clone()
        xb[1, 0, 3, 4] = bad
        with pytest.raises(InputError, match=r"NaN|Inf|non-finite|range"):
            explain(model, xb, method, 0, **fast)


def test_attacks_refuse_non_finite_images():
    from medxai.attacks import PGD

    model = M.create("small-cnn", 2, in_chans=1, normalize="none").eval()
    x = torch.rand(2, 1, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        PGD(model, eps=2 / 255, steps=1)(x, torch.zeros(2, dtype=torch.long))


def test_localisation_metrics_are_nan_where_undefined():
    from medxai.metrics import energy_pointing_game, pointing_game

    maps = torch.rand(3, 1, 8, 8)
    masks = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 2:5, 2:5] = True
    pg, epg = pointing_game(maps, masks), energy_pointing_game(maps, masks)
    assert torch.isfinite(pg[0]) and torch.isfinite(epg[0])
    assert torch.isnan(pg[1:]).all() and torch.isnan(epg[1:]).all()  # no lesion: undefined, not a miss


# ============================================================================ atomic writes, report text
def test_atomic_write_leaves_old_or_new_and_a_normal_file_mode(tmp_path):
    from medxai._util.io import atomic_write, atomic_write_json

    target = tmp_path / "result.json"
    atomic_write_json(target, {"v": 1})
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a temporary file

    def torn(p: Path) -> None:
        p.write_text('{"v": 2, "half')  # a writer that dies half way
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, torn)
    assert json.loads(target.read_text()) == {"v": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left behind
    os.chmod(target, 0o640)
    atomic_write_json(target, {"v": 3})
    assert json.loads(target.read_text()) == {"v": 3} and target.stat().st_mode & 0o777 == 0o640


def test_report_figures_show_dollar_signs_in_names_instead_of_parsing_tex(tmp_path):
    from medxai.report import build_report
    from test_report_build import _run_dir

    run = _run_dir(tmp_path)
    rj = json.loads((run / "report.json").read_text())
    bad = r"$\undefinedcommand{$ ^^ $"
    rj["models"]["standard"]["confusion"]["labels"] = ["NORMAL", bad]
    rj["data"]["class_names"] = ["NORMAL", bad]
    rj["robustness"]["attack"]["models"] = {bad: rj["robustness"]["attack"]["models"]["standard"]}
    (run / "report.json").write_text(json.dumps(rj))
    html = build_report(run).read_text()
    assert r"$\undefinedcommand{$ ^^ $" in html
