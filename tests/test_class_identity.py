"""Classes are matched by name, never by index: a run evaluated or explained on data whose classes are
named or ordered differently gives the numbers by name, or is refused naming both class lists."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from medxai.cli import _load_commands
from medxai.cli._app import app
from medxai.errors import ModelError


def _invoke(args):
    _load_commands()
    app(args=["--quiet", *args], standalone_mode=False)


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    from medxai.data import open_dataset, write_synthetic
    from medxai.models import create
    from medxai.train import fit

    root = tmp_path_factory.mktemp("classes")
    write_synthetic("cxr-pneumonia", root / "data", {"train": 40, "test": 24}, size=24, seed=0, balanced=True)
    torch.manual_seed(0)
    fit(create("small-cnn", 2, 1, normalize="none", width=4), open_dataset(str(root / "data"), split="train"), None,
        {"task": "binary", "epochs": 3, "batch_size": 16, "device": "cpu", "monitor": "train_loss"},
        run_dir=root / "run")
    return root


def test_declared_class_order_does_not_change_the_numbers(run_and_data, tmp_path):
    root = run_and_data
    _invoke(["evaluate", "--run", str(root / "run"), "--data", str(root / "data"), "--n-boot", "0",
             "--out", str(tmp_path / "a")])
    spec = tmp_path / "reversed.yaml"  # the same files, classes declared the other way round
    spec.write_text(yaml.safe_dump({"layout": "folder", "root": str(root / "data"),
                                    "classes": ["PNEUMONIA", "NORMAL"]}))
    _invoke(["evaluate", "--run", str(root / "run"), "--data", str(spec), "--n-boot", "0",
             "--out", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "eval.json").read_text())["metrics"]
    b = json.loads((tmp_path / "b" / "eval.json").read_text())["metrics"]
    assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["auc"] == pytest.approx(b["auc"])
    assert a["accuracy"] != pytest.approx(0.5)  # the model learnt something: matching by index would differ


def test_renamed_classes_are_refused_naming_both_lists(run_and_data, tmp_path):
    root = run_and_data
    data = tmp_path / "renamed"
    shutil.copytree(root / "data", data)
    (data / "medxai.json").unlink()
    for split in ("train", "test"):
        (data / split / "NORMAL").rename(data / split / "healthy")
        (data / split / "PNEUMONIA").rename(data / split / "sick")
    with pytest.raises(ModelError, match=r"\['NORMAL', 'PNEUMONIA'\].*\['healthy', 'sick'\]"):
        _invoke(["evaluate", "--run", str(root / "run"), "--data", str(data), "--out", str(tmp_path / "c")])
    with pytest.raises(ModelError, match=r"\['NORMAL', 'PNEUMONIA'\].*\['healthy', 'sick'\]"):
        _invoke(["explain", "--run", str(root / "run"), "--data", str(data), "--methods", "saliency", "--n", "2",
                 "--out", str(tmp_path / "d")])


def test_explain_reads_the_data_in_the_runs_class_order(run_and_data, tmp_path):
    root = run_and_data
    spec = tmp_path / "reversed.yaml"
    spec.write_text(yaml.safe_dump({"layout": "folder", "root": str(root / "data"),
                                    "classes": ["PNEUMONIA", "NORMAL"]}))
    _invoke(["explain", "--run", str(root / "run"), "--data", str(spec), "--methods", "saliency", "--n", "6",
             "--target", "label", "--out", str(tmp_path / "e")])
    info = json.loads((tmp_path / "e" / "maps.json").read_text())
    names = info["maps"]["run/saliency"]["target_names"]
    from medxai.data import open_dataset

    truth = {it["id"]: it for it in (open_dataset(str(root / "data"), split="test")[i] for i in range(24))}
    want = [["NORMAL", "PNEUMONIA"][int(truth[i]["label"])] for i in info["ids"]]
    assert names == want  # label targets name the true class, whatever order the spec declared
