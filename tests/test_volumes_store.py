"""The map store on volumes (issue 19): shards bounded by voxels (``max_shard_voxels``), the maps equal to a
direct ``explain`` call on the same batches, the 3-D masks, a rerun that computes nothing, and
``medxai store explain --max-shard-voxels``."""

from __future__ import annotations

import json

import pytest
import torch

from medxai.errors import ConfigError

N, SIZE = 7, 16
METHODS = ["saliency", "gradcam"]
VOXELS = SIZE ** 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    from medxai.models import create

    torch.manual_seed(0)
    return create("small-cnn3d", 2, 1).eval()


def _data(n: int = N):
    from medxai.data.volumes import SyntheticVolumeDataset

    return SyntheticVolumeDataset("ct-nodule", n, SIZE, 0, "test")


def test_shards_bounded_by_voxels_hold_the_maps_of_explain_and_a_rerun_computes_nothing(tmp_path):
    from medxai.distributed import MapStore, explain_dataset
    from medxai.explain import explain

    m, ds = _model(), _data()
    budget = 3 * len(METHODS) * VOXELS + VOXELS  # room for 3 volumes' 2 maps, not 4
    run = explain_dataset({"m": m}, ds, METHODS, tmp_path / "s", shard_size=256, batch_size=32, dtype="float32",
                          max_shard_voxels=budget)
    # shard size min(256, max(1, budget // (T D H W))) = min(256, 3): shards of 3, 3, 1
    assert run.n_shards == 3 and run.computed == [0, 1, 2]
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["shard_size"] == 3 and index["n_shards"] == 3 and index["complete"] is True
    assert index["config"]["max_shard_voxels"] == budget and index["config"]["spatial"] == [SIZE] * 3
    assert index["config"]["explain_batch_size"] == 3  # the batch bounded by the same budget
    ms = MapStore.open(tmp_path / "s")
    items = [ds[j] for j in range(N)]
    x = torch.stack([it["image"] for it in items])
    pred = m(x).argmax(1)
    for i in range(3):
        t, meta = ms.read(i)
        a, b = ms.shard_range(i)
        assert t["index"].tolist() == list(range(a, b)) and meta["ids"] == [it["id"] for it in items[a:b]]
        assert t["targets/m"].tolist() == pred[a:b].tolist()
        assert t["masks"].shape == (b - a, 1, SIZE, SIZE, SIZE) and t["masks"].dtype == torch.uint8
        assert torch.equal(t["masks"].bool(), torch.stack([torch.as_tensor(it["mask"]) for it in items[a:b]]))
        for method in METHODS:  # one explain batch per shard: exactly explain() on x[a:b]
            want = explain(m, x[a:b], method, pred[a:b]).detach()
            assert want.shape == (b - a, 1, SIZE, SIZE, SIZE)
            assert torch.equal(t[f"maps/m/{method}"], want), (i, method)
    again = explain_dataset({"m": m}, ds, METHODS, tmp_path / "s", shard_size=256, batch_size=32, dtype="float32",
                            max_shard_voxels=budget)
    assert again.computed == [] and again.skipped == [0, 1, 2]
    # a budget below one volume's maps still makes progress: one volume per shard
    one = explain_dataset({"m": m}, _data(2), ["saliency"], tmp_path / "one", max_shard_voxels=10)
    assert one.n_shards == 2 and MapStore.open(tmp_path / "one").shard_size == 1
    # no budget: the given shard size (stores written before the option keep their fingerprint)
    plain = explain_dataset({"m": m}, _data(2), ["saliency"], tmp_path / "plain", shard_size=4)
    assert plain.n_shards == 1 and "max_shard_voxels" not in MapStore.open(tmp_path / "plain").config
    with pytest.raises(ConfigError, match="max_shard_voxels"):
        explain_dataset({"m": m}, ds, METHODS, tmp_path / "bad", max_shard_voxels=0)


def test_cli_store_explain_max_shard_voxels(tmp_path):
    from medxai.cli import main
    from medxai.data import open_dataset
    from medxai.data.volumes import write_synthetic_volumes
    from medxai.distributed import MapStore
    from medxai.train import fit

    root = tmp_path / "ct"
    write_synthetic_volumes("ct-nodule", root, {"train": 4, "test": 5}, size=SIZE)
    train = open_dataset(str(root), split="train")
    torch.manual_seed(0)
    from medxai.models import create

    fit(create("small-cnn3d", 2, 1), train, config={"task": "binary", "epochs": 1, "batch_size": 4},
        run_dir=tmp_path / "run")
    store = tmp_path / "maps"
    main(["--quiet", "store", "explain", "--run", str(tmp_path / "run"), "--data", str(root), "--store", str(store),
          "--methods", "saliency", "--max-shard-voxels", str(2 * VOXELS)])
    ms = MapStore.open(store)
    assert (ms.shard_size, ms.n_shards, ms.done()) == (2, 3, [0, 1, 2])
    assert ms.read(2)[0]["maps/run/saliency"].shape == (1, 1, SIZE, SIZE, SIZE)
