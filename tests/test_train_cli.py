"""``medxai train`` and ``medxai evaluate`` on folders written by ``medxai data synth``: the run
directory, --resume, eval.json / predictions.csv equal to the API, and multilabel U-Random soft
targets (CheXpert layout) from the YAML config through training and evaluation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from medxai.cli import main


def _synth(root, study: str, n: int, *options: str) -> None:
    args = ["--quiet", "data", "synth", study, "--out", str(root), "--n", str(n), "--size", "24", "--seed", "0",
            "--splits", "train=0.6,val=0.2,test=0.2"]
    for o in options:
        args += ["--option", o]
    main(args)


def _config(path, data, data_section: dict | None = None, **train) -> None:
    path.write_text(yaml.safe_dump({
        "name": "cli", "model": {"name": "small-cnn", "params": {"width": 8}},
        "data": {"train": str(data), **(data_section or {})},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "device": "cpu", **train}}))


@pytest.mark.slow
def test_train_resume_and_evaluate_on_a_synthesised_folder(tmp_path):
    from medxai.data import open_dataset
    from medxai.evaluate import classification, predict
    from medxai.train import load_run

    data = tmp_path / "pneumonia"
    _synth(data, "cxr-pneumonia", 80, "balanced=true")
    cfg = tmp_path / "cfg.yaml"
    _config(cfg, data, monitor="val_balanced_accuracy")
    run = tmp_path / "run"
    main(["--quiet", "train", "--config", str(cfg), "--out", str(run), "--set", "train.epochs=1"])
    for f in ("config.yaml", "model.json", "metrics.jsonl", "best.safetensors", "last.safetensors", "train.log",
              "summary.json"):
        assert (run / f).is_file(), f
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1
    with pytest.raises(SystemExit) as info:  # a second train into the same folder needs --resume
        main(["--quiet", "train", "--config", str(cfg), "--out", str(run)])
    assert info.value.code == 2
    main(["--quiet", "train", "--config", str(cfg), "--out", str(run), "--resume"])  # epochs 2 from the YAML
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and "val_balanced_accuracy" in lines[-1]
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "binary" and meta["class_names"] == ["NORMAL", "PNEUMONIA"] and meta["in_chans"] == 1

    main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--n-boot", "50"])
    ev = json.loads((run / "eval.json").read_text())
    test = open_dataset(str(data), split="test")
    model, info = load_run(run)
    ids, y, scores = predict(model, test, task="binary")
    ref = classification(y, scores, "binary", info.class_names, n_boot=50, seed=0)
    assert ev["n"] == len(test) == 16 and ev["metrics"] == pytest.approx(ref["metrics"], nan_ok=True)
    assert ev["ci"]["balanced_accuracy"] == ref["ci"]["balanced_accuracy"]
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    assert [r["id"] for r in rows] == ids
    assert np.allclose([float(r["score_PNEUMONIA"]) for r in rows], scores[:, 1], atol=1e-8)


@pytest.mark.slow
def test_multilabel_u_random_soft_targets_train_and_evaluate_from_the_cli(tmp_path):
    data = tmp_path / "chexpert"
    _synth(data, "cxr-multilabel", 90, "uncertain_share=0.3")
    cfg = tmp_path / "cfg.yaml"
    _config(cfg, data, monitor="val_auc_macro", data_section={"options": {"uncertainty": "random"}})
    run = tmp_path / "run"
    main(["--quiet", "train", "--config", str(cfg), "--out", str(run)])
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(r["val_loss"]) for r in lines)  # soft validation labels
    main(["--quiet", "evaluate", "--run", str(run), "--data", str(data), "--n-boot", "20"])
    ev = json.loads((run / "eval.json").read_text())
    n_soft = sum(r["n_soft_ignored"] for r in ev["per_class"].values())
    assert ev["task"] == "multilabel" and n_soft > 0 and ev["settings"]["soft_labels"].startswith(f"{n_soft} soft")
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    truths = [float(v) for r in rows for k, v in r.items() if k.startswith("truth_") and v != ""]
    soft = [v for v in truths if 0 < v < 1]
    assert len(soft) == n_soft and all(0.55 <= v <= 0.85 for v in soft)
