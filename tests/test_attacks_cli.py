"""``medxai attack`` / ``medxai corrupt``: the gallery, the corruption table's numbers, the plots."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

import medxai.cli.attack as cli_attack
from medxai.cli._app import app
from medxai.corruptions import apply


def _invoke(args):
    app(args=args, standalone_mode=False)


def test_corrupt_gallery_command_writes_png(tmp_path):
    _invoke(["--quiet", "corrupt", "--gallery", "--names", "light_leakage,haze", "--severities", "1,4,5",
             "-o", str(tmp_path)])
    img = Image.open(tmp_path / "gallery.png")
    assert img.size[0] > 300 and img.size[1] > 150


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


def test_corruption_table_numbers_equal_sklearn_and_levels_are_capped():
    model = _model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:6] = 1 - y[:6]
    t = cli_attack.corruption_table(model, x, y, "binary", ["a", "b"], ["underexposure", "haze"], [1, 5],
                                    seed=3, batch_size=16)
    assert list(t["corruptions"]["underexposure"]) == ["1"]  # level 5 does not exist for the fundus faults
    assert list(t["corruptions"]["haze"]) == ["1", "5"]

    def numbers(xc):
        with torch.no_grad():
            p = torch.softmax(model(xc), 1).numpy()
        return balanced_accuracy_score(y.numpy(), p.argmax(1)), roc_auc_score(y.numpy(), p[:, 1])

    bal, auc = numbers(x)
    assert t["clean"]["balanced_accuracy"] == pytest.approx(bal) and t["clean"]["auc"] == pytest.approx(auc)
    xc = torch.cat([apply(x[i:i + 16], "haze", 5, seed=3 + i) for i in range(0, 40, 16)])
    bal5, auc5 = numbers(xc)
    cell = t["corruptions"]["haze"]["5"]
    assert cell["metrics"]["balanced_accuracy"] == pytest.approx(bal5) and cell["metrics"]["auc"] == pytest.approx(auc5)
    assert cell["drop"]["balanced_accuracy"] == pytest.approx(bal - bal5)
    errs = [1 - r["metrics"]["balanced_accuracy"] for rows in t["corruptions"].values() for r in rows.values()]
    assert t["mean_corruption_error"] == pytest.approx(np.mean(errs))


def test_plots_are_written(tmp_path):
    res = {"a": {"eps": [0, 1 / 255, 2 / 255], "success_rate": [0, 0.3, 0.6], "norm": "linf"},
           "b": {"eps": [0, 1 / 255, 2 / 255], "success_rate": [0, 0.1, 0.2], "norm": "linf"}}
    p = cli_attack.plot_success(res, tmp_path / "attack.png")
    assert Image.open(p).size[0] > 200
    model = _model()
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    t = cli_attack.corruption_table(model, x, y, "binary", ["a", "b"], ["gamma"], [1, 2])
    p = cli_attack.plot_drops({"m1": t, "m2": t}, tmp_path / "c.png")
    assert Image.open(p).size[0] > 200
    json.dumps(t)  # JSON-ready


@pytest.fixture(scope="module")
def study_and_runs(tmp_path_factory):
    """A written synthetic study and two tiny trained runs (standard, adversarial)."""
    from medxai.data import open_dataset, write_synthetic
    from medxai.models import create
    from medxai.train import fit

    root = tmp_path_factory.mktemp("cli")
    write_synthetic("cxr-pneumonia", root / "data", {"train": 48, "test": 24}, size=24, seed=0, balanced=True)
    train = open_dataset(str(root / "data"), split="train")
    runs = []
    for name, obj in (("std", {"name": "standard"}), ("adv", {"name": "adversarial", "eps": 0.01, "steps": 2})):
        torch.manual_seed(0)
        fit(create("small-cnn", 2, 1, normalize="none", width=4), train, None,
            {"task": "binary", "epochs": 2, "batch_size": 16, "device": "cpu", "monitor": "train_loss",
             "objective": obj}, run_dir=root / name)
        runs.append(root / name)
    return root, runs


def test_attack_command_equals_the_api(study_and_runs, tmp_path):
    from medxai.attacks import evaluate
    from medxai.cli import main
    from medxai.data import open_dataset
    from medxai.train import load_run

    root, runs = study_and_runs
    main(["--quiet", "attack", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(root / "data"),
          "--eps", "1/255,4/255", "--steps", "3", "--n", "20", "-o", str(tmp_path)])
    rep = json.loads((tmp_path / "attack.json").read_text())
    assert rep["eps"] == [0.0, 1 / 255, 4 / 255] and set(rep["runs"]) == {"std", "adv"}
    test = open_dataset(str(root / "data"), split="test")
    x = torch.stack([test[i]["image"] for i in range(20)])
    y = torch.stack([test[i]["label"] for i in range(20)])
    model, _ = load_run(runs[0], device="cpu")
    api = evaluate(model, (x, y), [0.0, 1 / 255, 4 / 255], steps=3, task="binary", seed=0)
    assert rep["runs"]["std"]["success_rate"] == api["success_rate"]
    assert rep["runs"]["std"]["robust_accuracy"][0] == api["clean_accuracy"]
    assert Image.open(tmp_path / "attack.png").size[0] > 200


def test_corrupt_command_writes_table_and_heat_map(study_and_runs, tmp_path):
    from medxai.cli import main

    root, runs = study_and_runs
    main(["--quiet", "corrupt", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(root / "data"),
          "--names", "motion_blur,light_leakage", "--severities", "1,3,5", "--n", "16", "-o", str(tmp_path)])
    rep = json.loads((tmp_path / "corruption.json").read_text())
    std = rep["runs"]["std"]
    assert std["headline"] == "balanced_accuracy" and list(std["corruptions"]["motion_blur"]) == ["1", "3"]
    assert rep["runs"]["std"]["mce_vs_first_run"] == pytest.approx(1.0)  # the first run is the baseline
    assert Image.open(tmp_path / "corruption.png").size[0] > 200
    with pytest.raises(SystemExit):
        main(["--quiet", "corrupt", "--data", str(root / "data")])  # neither --run nor --gallery: exit 2
