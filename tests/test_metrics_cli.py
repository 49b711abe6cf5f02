"""``medxai score`` on a maps folder in ``medxai explain``'s format: scores.csv rows equal the API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medxai._util.io import atomic_write_json, save_safetensors


class _Squares(torch.utils.data.Dataset):
    """A bright square on the left (class 0) or the right (class 1) of a 16 x 16 image, with its mask."""

    task = "binary"
    class_names = ("left", "right")

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
        self.m = torch.zeros(n, 16, 16, dtype=torch.bool)
        for i in range(n):
            c = 2 + 8 * int(self.y[i])
            self.x[i, 0, 5:10, c : c + 5] = 1.0
            self.m[i, 5:10, c : c + 5] = True
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "mask": self.m[i], "id": f"sq-{i:03d}"}


def _main(args: list[str]) -> None:
    """medxai's entry point; until every stage's CLI module exists, the typer app with score loaded."""
    try:
        import medxai.cli.data
    except ImportError:
        import medxai.cli.score  # noqa: F401 - registers the command
        from medxai.cli._app import app

        app(args=args, standalone_mode=False)
        return
    from medxai.cli import main

    main(args)


@pytest.fixture(scope="module")
def maps_folder(tmp_path_factory):
    from medxai.models import create
    from medxai.train import fit, load_run

    root = tmp_path_factory.mktemp("score")
    torch.manual_seed(0)
    model = create("small-cnn", 2, in_chans=1)
    fit(model, _Squares(32, 0), config={"task": "binary", "epochs": 2, "batch_size": 8, "seed": 0},
        run_dir=root / "standard")
    model, _ = load_run(root / "standard")
    test = _Squares(6, 1)
    x = test.x
    with torch.no_grad():
        t = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)[0].abs()
    ids = [f"sq-{i:03d}" for i in range(6)]
    folder = root / "maps"
    save_safetensors(folder / "maps.safetensors", {"images": x, "targets/standard": t, "standard/saliency": grad},
                     metadata={"ids": json.dumps(ids), "format": "medxai-maps-1"})
    atomic_write_json(folder / "maps.json", {
        "ids": ids, "labels": test.y.tolist(), "data": None, "split": "test",
        "runs": {"standard": {"dir": str(root / "standard")}},
        "maps": {"standard/saliency": {"run": "standard", "method": "saliency", "output": "logit",
                                       "targets": t.tolist()}}})
    return root, model, x, grad[:, 0], t, test.m


def test_score_writes_rows_equal_to_the_api(maps_folder):
    from medxai.metrics import deletion, road, sparseness, total_variation

    root, model, x, maps, t, _ = maps_folder
    out = root / "out"
    _main(["--quiet", "score", "--maps", str(root / "maps"), "--out", str(out),
          "--metrics", "gini,total_variation,deletion,road,pointing_game", "--options", "{deletion: {steps: 16}}",
          "--n-boot", "200", "--device", "cpu"])
    df = pd.read_csv(out / "scores.csv")
    assert set(df.metric) == {"sparseness", "total_variation", "deletion", "road_morf"}
    assert len(df) == 4 * 6 and set(df.id) == {f"sq-{i:03d}" for i in range(6)}

    def col(name):
        return df[df.metric == name].sort_values("id").value.to_numpy()

    np.testing.assert_allclose(col("sparseness"), sparseness(maps).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(col("total_variation"), total_variation(maps).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(col("deletion"), deletion(model, x, maps, t, steps=16).auc.double().numpy(),
                               rtol=1e-5)
    from medxai._util.seed import derive_seed

    seeds = [derive_seed(0, "road", f"sq-{i:03d}") for i in range(6)]
    np.testing.assert_allclose(col("road_morf"), road(model, x, maps, t, seed=seeds).auc.double().numpy(), rtol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"]["standard/saliency"]["pointing_game"].startswith("needs a lesion mask")
    row = next(r for r in summary["summary"] if r["metric"] == "sparseness")
    assert row["model"] == "standard" and row["method"] == "saliency" and row["n"] == 6
    assert row["mean"] == pytest.approx(col("sparseness").mean())
    assert summary["metrics"]["deletion"]["higher_is_better"] is False


def test_score_refuses_unknown_metric_and_missing_folder(tmp_path, maps_folder):
    from medxai.errors import ConfigError, DataError

    root = maps_folder[0]
    with pytest.raises(ConfigError, match="unknown metric 'nope'"):
        _main(["--debug", "score", "--maps", str(root / "maps"), "--out", str(tmp_path), "--metrics", "nope"])
    with pytest.raises(DataError, match=r"maps\.json"):
        _main(["--debug", "score", "--maps", str(tmp_path / "absent"), "--out", str(tmp_path)])


def test_explain_then_score_with_masks_end_to_end(tmp_path):
    """A synthetic study written in a real layout -> train -> `medxai explain` -> `medxai score`."""
    data_mod = pytest.importorskip("medxai.data")
    pytest.importorskip("medxai.cli.data")
    from medxai.cli import main
    from medxai.metrics import energy_pointing_game, pointing_game, shortcut_share, topk_iou
    from medxai.models import create
    from medxai.train import fit

    root = tmp_path / "study"
    data_mod.write_synthetic("cxr-pneumonia", root, {"train": 16, "test": 6}, size=32, seed=0, shortcut=0.8)
    train = data_mod.open_dataset(str(root), split="train")
    torch.manual_seed(0)
    fit(create("small-cnn", 2, in_chans=1), train, config={"task": "binary", "epochs": 1, "batch_size": 8, "seed": 0},
        run_dir=tmp_path / "run")
    maps_dir, out = tmp_path / "maps", tmp_path / "scores"
    main(["--quiet", "explain", "--run", str(tmp_path / "run"), "--data", str(root), "--methods", "saliency",
          "--n", "6", "--out", str(maps_dir)])
    main(["--quiet", "score", "--maps", str(maps_dir), "--out", str(out), "--n-boot", "100",
          "--metrics", "pointing_game,energy,topk_iou,shortcut", "--device", "cpu"])
    df = pd.read_csv(out / "scores.csv")
    assert set(df.metric) == {"pointing_game", "energy_pointing_game", "topk_iou@5", "topk_iou@10", "topk_iou@20",
                              "topk_iou@40", "shortcut_share", "shortcut_max"}
    from safetensors.torch import load_file

    t = load_file(str(maps_dir / "maps.safetensors"))
    maps = t["run/saliency"][:, 0]
    test = data_mod.open_dataset(str(root), split="test")
    from medxai.data.sampling import sample_indices

    items = [test[i] for i in sample_indices(test, 6)[0]]  # explain --n 6: a stratified prefix
    masks = torch.stack([it["mask"][0] for it in items])
    marker = torch.stack([it["shortcut_mask"][0] for it in items])

    def col(name):
        return df[df.metric == name].set_index("id").loc[[it["id"] for it in items], "value"].to_numpy()

    np.testing.assert_allclose(col("pointing_game"), pointing_game(maps, masks).numpy(), equal_nan=True)
    np.testing.assert_allclose(col("energy_pointing_game"), energy_pointing_game(maps, masks).numpy(), rtol=1e-6,
                               equal_nan=True)
    np.testing.assert_allclose(col("topk_iou@10"), topk_iou(maps, masks, k=10).numpy(), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(col("shortcut_share"), shortcut_share(maps, marker).share.numpy(), rtol=1e-6,
                               equal_nan=True)
    summary = json.loads((out / "summary.json").read_text())
    assert {r["metric"] for r in summary["summary"]} == set(df.metric)
