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
