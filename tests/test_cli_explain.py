"""``medxai explain``: maps and PNG grids for two trained runs on a folder dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image


def _folder_dataset(root, n_per_class=3, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, cls in enumerate(("NORMAL", "PNEUMONIA")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                img = rng.integers(0, 120, (size, size), dtype=np.uint8)
                if k:
                    img[8:20, 8:20] = 230  # a bright "lesion"
                Image.fromarray(img).save(d / f"{cls.lower()}_{i}.png")
    return root


def _train_run(run_dir, data, seed):
    from medxai.models import create
    from medxai.train import fit

    torch.manual_seed(seed)
    model = create("small-cnn", 2, in_chans=data[0]["image"].shape[0])
    fit(model, data, config={"task": "binary", "epochs": 1, "batch_size": 4, "seed": seed}, run_dir=run_dir)
    return run_dir


def test_explain_two_runs_writes_maps_and_pngs(tmp_path):
    data_mod = pytest.importorskip("medxai.data")
    if not hasattr(data_mod, "open_dataset"):
        pytest.skip("medxai.data.open_dataset not built yet")
    from safetensors import safe_open

    from medxai.cli import main
    from medxai.explain import explain
    from medxai.train import load_run

    root = _folder_dataset(tmp_path / "data")
    train = data_mod.open_dataset(str(root), split="train")
    runs = [_train_run(tmp_path / name, train, s) for name, s in (("standard", 0), ("robust", 1))]
    out = tmp_path / "out"
    main(["--quiet", "explain", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(root),
          "--methods", "saliency,occlusion,lime", "--n", "5", "--out", str(out), "--rows-per-png", "3"])

    info = json.loads((out / "maps.json").read_text())
    with safe_open(str(out / "maps.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["ids"]) == info["ids"]
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert len(info["ids"]) == 5
    test = data_mod.open_dataset(str(root), split="test")
    from medxai.data.sampling import sample_indices

    x = torch.stack([test[i]["image"] for i in sample_indices(test, 5)[0]])  # --n: a stratified prefix
    torch.testing.assert_close(tensors["images"], x)
    for run in ("standard", "robust"):
        model, _ = load_run(tmp_path / run)
        pred = model(x).argmax(-1)
        assert tensors[f"targets/{run}"].tolist() == pred.tolist()
        for method, output in (("saliency", "logit"), ("occlusion", "logit"), ("lime", "softmax")):
            entry = info["maps"][f"{run}/{method}"]
            assert entry["output"] == output and entry["targets"] == pred.tolist()
            assert entry["target_names"][0] in ("NORMAL", "PNEUMONIA")
            expect = explain(model, x, method, pred)
            assert tensors[f"{run}/{method}"].shape == (5, 1, 32, 32)
            torch.testing.assert_close(tensors[f"{run}/{method}"], expect, atol=1e-5, rtol=1e-4)
    assert not torch.equal(tensors["standard/saliency"], tensors["robust/saliency"])
    assert info["pngs"] == ["grid_000.png", "grid_001.png"]
    for name in info["pngs"]:
        with Image.open(out / name) as im:
            assert im.size[0] == 7 * 2 * 100  # image column + 3 methods x 2 runs, 2 in at 100 dpi


def test_explain_refuses_unknown_method(tmp_path, capsys):
    pytest.importorskip("medxai.cli.data")  # main() loads every stage's commands
    from medxai.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["explain", "--run", str(tmp_path), "--data", str(tmp_path), "--methods", "saliency,nope",
              "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err
