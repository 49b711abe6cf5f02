"""``medxai attack`` / ``medxai corrupt``: the gallery, the corruption table's numbers, the plots."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

from medxai.attacks.plots import plot_success
from medxai.cli import _load_commands
from medxai.cli._app import app
from medxai.corruptions import apply, corruption_table, plot_drops
from medxai.data.sampling import sample_indices


def _invoke(args):
    _load_commands()
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
    t = corruption_table(model, x, y, "binary", ["a", "b"], ["underexposure", "haze"], [1, 5], seed=3, batch_size=16)
    assert list(t["corruptions"]["underexposure"]) == ["1"]  # level 5 does not exist for the fundus faults
    assert list(t["corruptions"]["haze"]) == ["1", "5"]

    def numbers(xc):
        with torch.no_grad():
            p = torch.softmax(model(xc), 1).numpy()
        return balanced_accuracy_score(y.numpy(), p.argmax(1)), roc_auc_score(y.numpy(), p[:, 1])

    bal, auc = numbers(x)
    assert t["clean"]["balanced_accuracy"] == pytest.approx(bal) and t["clean"]["auc"] == pytest.approx(auc)
    xc = apply(x, "haze", 5, seed=3)  # the whole sample in one seeded call, whatever the batch size
    bal5, auc5 = numbers(xc)
    cell = t["corruptions"]["haze"]["5"]
    assert cell["metrics"]["balanced_accuracy"] == pytest.approx(bal5) and cell["metrics"]["auc"] == pytest.approx(auc5)
    assert cell["drop"]["balanced_accuracy"] == pytest.approx(bal - bal5)
    # the audit's shared clean logits replace the clean forward and change nothing
    with torch.no_grad():
        logits = model(x)
    shared = corruption_table(model, x, y, "binary", ["a", "b"], ["underexposure", "haze"], [1, 5], seed=3,
                              batch_size=16, clean_logits=logits)
    assert shared["clean"] == pytest.approx(t["clean"], abs=1e-12) and shared["corruptions"] == t["corruptions"]
    errs = [1 - r["metrics"]["balanced_accuracy"] for rows in t["corruptions"].values() for r in rows.values()]
    assert t["mean_corruption_error"] == pytest.approx(np.mean(errs))
    other = corruption_table(model, x, y, "binary", ["a", "b"], ["underexposure", "haze"], [1, 5], seed=3, batch_size=7)
    assert other["corruptions"] == t["corruptions"]  # the batch size bounds memory, not the numbers


def test_plots_are_written(tmp_path):
    res = {"a": {"eps": [0, 1 / 255, 2 / 255], "success_rate": [0, 0.3, 0.6], "norm": "linf"},
           "b": {"eps": [0, 1 / 255, 2 / 255], "success_rate": [0, 0.1, 0.2], "norm": "linf"}}
    p = plot_success(res, tmp_path / "attack.png")
    assert Image.open(p).size[0] > 200
    model = _model()
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    t = corruption_table(model, x, y, "binary", ["a", "b"], ["gamma"], [1, 2])
    p = plot_drops({"m1": t, "m2": t}, tmp_path / "c.png")
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
    index = sample_indices(test, 20, seed=0)[0]  # --n draws a stratified prefix (seeded by --seed)
    x = torch.stack([test[i]["image"] for i in index])
    y = torch.stack([test[i]["label"] for i in index])
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


def _test_sample(root, n, seed):
    from medxai.data import open_dataset
    from medxai.pipeline.data import eval_sample

    return eval_sample(open_dataset(str(root / "data"), split="test"), n, seed=seed)


def test_corrupt_command_and_the_audit_give_identical_tables(study_and_runs, tmp_path):
    """One corruption table: `medxai corrupt` (batches of 5) and the audit's stage (its own
    batching) report the same numbers for the same model, data, seed and levels."""
    from medxai.cli import main
    from medxai.pipeline.robustness import corruption_table as audit_table
    from medxai.runs import load_run

    root, runs = study_and_runs
    main(["--quiet", "corrupt", "--run", str(runs[0]), "--data", str(root / "data"), "--names",
          "gaussian_noise,haze", "--severities", "1,5", "--n", "16", "--seed", "4", "--batch-size", "5",
          "-o", str(tmp_path)])
    cli = json.loads((tmp_path / "corruption.json").read_text())["runs"]["std"]
    model, info = load_run(runs[0], device="cpu")
    audit = audit_table(model, _test_sample(root, 16, 4), "binary", info.class_names, ["gaussian_noise", "haze"],
                        [1, 5], seed=4)
    head = cli["headline"]
    assert audit["metric"] == head and audit["clean"] == cli["clean"][head]
    for name in ("gaussian_noise", "haze"):
        assert audit["values"][name] == [cli["corruptions"][name][s]["metrics"][head] for s in ("1", "5")]
        assert audit["drops"][name] == [cli["corruptions"][name][s]["drop"][head] for s in ("1", "5")]
    assert audit["mean_drop"] == cli["mean_drop"]
    assert audit["table"]["corruptions"] == cli["corruptions"] and audit["table"]["clean"] == cli["clean"]
    aucs = {r["metrics"]["auc"] for rows in cli["corruptions"].values() for r in rows.values()}
    assert len(aucs | {cli["clean"]["auc"]}) > 2  # the corruptions changed the scores, so the seeds matter


@pytest.mark.parametrize(("eps", "norm", "label"), [(0.25 / 255, "linf", "0.25/255"), (8 / 255, "linf", "8/255"),
                                                    (1 / 255, "linf", "1/255"), (0.5, "l2", "0.5"),
                                                    (0.0, "linf", "0"), (0.001, "linf", "0.001")])
def test_format_eps_labels(eps, norm, label):
    from medxai.attacks import format_eps

    assert format_eps(eps, norm) == label


def test_cli_and_report_print_the_same_budget_labels(study_and_runs, tmp_path, capsys):
    from medxai.attacks import format_eps
    from medxai.cli import main
    from medxai.pipeline.config import load_config
    from medxai.pipeline.report_data import _robustness_section

    root, runs = study_and_runs
    for norm, eps, want in (("linf", "0.25/255,8/255", ["0", "0.25/255", "8/255"]), ("l2", "0.5", ["0", "0.5"])):
        out = tmp_path / norm
        main(["attack", "--run", str(runs[0]), "--data", str(root / "data"), "--norm", norm, "--eps", eps,
              "--steps", "1", "--n", "4", "-o", str(out)])
        rep = json.loads((out / "attack.json").read_text())
        assert rep["eps_labels"] == want == [format_eps(e, norm) for e in rep["eps"]]
        printed = capsys.readouterr().out
        assert all(f"{w}: " in printed for w in want) and "128/255" not in printed
        cfg = load_config({"name": "t", "data": {"synthetic": {"study": "cxr-pneumonia"}},
                           "models": [{"name": "m", "arch": "small-cnn"}], "attack": {"norm": norm, "eps": rep["eps"]}})
        section = _robustness_section(cfg, {"m": rep["runs"]["std"]}, {})
        assert section["attack"]["eps_labels"] == want
