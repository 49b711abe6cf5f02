"""The chunked store in one process: content, SIGKILL mid-write and rerun, resumed scoring, refusals,
the sharded sampler, torchrun environment checks and the ``medxai store`` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from medxai.errors import ConfigError, DataError, InputError

N, SIZE, SHARD, BATCH = 28, 32, 5, 4
METHODS = ["saliency", "gradcam"]
METRICS = ["pointing_game", "mask_auroc", "sparseness", "deletion"]
OPTIONS = {"deletion": {"steps": 4}}


def model():
    from medxai.models import create

    torch.manual_seed(0)
    return create("small-cnn", 2, in_chans=1, normalize="none")


def data(n: int = N):
    from medxai.data import SyntheticDataset

    return SyntheticDataset("cxr-pneumonia", n, size=SIZE, split="test")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: on 2 shared cores more threads spin


def _shards(root: Path) -> dict[int, dict[str, torch.Tensor]]:
    from medxai.distributed import MapStore

    ms = MapStore.open(root)
    return {i: ms.read(i)[0] for i in range(ms.n_shards)}


def _assert_same_maps(a: Path, b: Path) -> None:
    sa, sb = _shards(a), _shards(b)
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: maps (float16) and scores."""
    from medxai.distributed import explain_dataset, score_store

    root = tmp_path_factory.mktemp("ref") / "store"
    m, ds = model(), data()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = explain_dataset({"m": m}, ds, METHODS, root, shard_size=SHARD, batch_size=BATCH)
        score = score_store(root, METRICS, dataset=ds, models={"m": m}, options=OPTIONS, n_boot=20)
    finally:
        torch.set_num_threads(n)
    return root, run, score


# ----------------------------------------------------------------------------- content
def test_store_holds_the_maps_of_explain_with_masks_targets_and_ids(reference, tmp_path):
    from medxai.distributed import MapStore, explain_dataset
    from medxai.explain import explain

    root, run, _ = reference
    assert run.computed == list(range(6)) and run.skipped == [] and run.world_size == 1
    ms = MapStore.open(root)
    assert (ms.n, ms.shard_size, ms.n_shards) == (N, SHARD, 6)
    assert json.loads((root / "index.json").read_text())["complete"] is True
    m, ds = model().eval(), data()
    t3, meta3 = ms.read(3)
    assert meta3["ids"] == [ds[j]["id"] for j in range(15, 20)]
    assert t3["index"].tolist() == list(range(15, 20))
    x = torch.stack([ds[j]["image"] for j in range(15, 20)])
    pred = m(x).argmax(-1)
    assert t3["targets/m"].tolist() == pred.tolist()
    assert t3["masks"].shape == (5, 1, SIZE, SIZE) and t3["masks"].dtype == torch.uint8
    assert torch.equal(t3["masks"].bool(), torch.stack([ds[j]["mask"] for j in range(15, 20)]))
    assert t3["maps/m/saliency"].dtype == torch.float16
    # float32 store: exactly explain() on the same batches (a shard of 5 in batches of 4: 4 + 1)
    f32 = explain_dataset({"m": m}, ds, METHODS, tmp_path / "f32", shard_size=SHARD, batch_size=BATCH,
                          dtype="float32")
    assert f32.computed == list(range(6))
    t3f = MapStore.open(tmp_path / "f32").read(3)[0]
    for method in METHODS:
        want = torch.cat([explain(m, x[:4], method, pred[:4]), explain(m, x[4:], method, pred[4:])])
        assert torch.equal(t3f[f"maps/m/{method}"], want.detach())
        assert torch.equal(t3[f"maps/m/{method}"], want.detach().half())


def test_scores_stream_shard_by_shard_into_csv_and_summary(reference):
    from medxai.metrics import deletion, mask_auroc, pointing_game

    root, _, score = reference
    df = pd.read_csv(root / "scores" / "scores.csv")
    assert set(df["metric"]) == set(METRICS) and set(df["method"]) == set(METHODS)
    assert len(df) == N * len(METHODS) * len(METRICS)
    # one shard scored directly with the metric functions gives the CSV's numbers
    shard = _shards(root)[2]
    maps = shard["maps/m/gradcam"].float()[:, 0]
    masks = shard["masks"].bool()[:, 0]
    ids = [data()[j]["id"] for j in range(10, 15)]
    got = df[(df["method"] == "gradcam") & df["id"].isin(ids)].set_index(["id", "metric"])["value"]
    for name, fn in (("pointing_game", pointing_game), ("mask_auroc", mask_auroc)):
        want = fn(maps, masks).double().tolist()
        have = [got[(i, name)] for i in ids]
        assert have == pytest.approx(want, nan_ok=True, rel=0, abs=1e-12)
    ds, m = data(), model().eval()
    x = torch.stack([ds[j]["image"] for j in range(10, 15)])
    want = deletion(m, x, maps, shard["targets/m"], steps=4).auc.double().tolist()
    assert [got[(i, "deletion")] for i in ids] == pytest.approx(want, rel=1e-6)
    summ = {(r["method"], r["metric"]): r for r in score["summary"]}
    sal = df[(df["method"] == "saliency") & (df["metric"] == "sparseness")]["value"]
    assert summ[("saliency", "sparseness")]["mean"] == pytest.approx(sal.mean())
    assert summ[("saliency", "sparseness")]["n"] == N


# ----------------------------------------------------------------------------- kill and rerun
KILLER = textwrap.dedent('''
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    import medxai._util.io as io
    import test_distributed_store as T
    from medxai.distributed import explain_dataset

    real = io.atomic_write

    def write(path, fn):
        if path.name == "shard-00002.safetensors":  # SIGKILL in the middle of writing shard 2
            def half(tmp):
                tmp.write_bytes(b"half a shard")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, half)
        return real(path, fn)

    io.atomic_write = write
    explain_dataset({"m": T.model()}, T.data(), T.METHODS, sys.argv[1], shard_size=T.SHARD, batch_size=T.BATCH)
    print("not killed")
''')


def test_sigkill_mid_write_then_rerun_computes_only_the_missing_shards(reference, tmp_path):
    from medxai.distributed import MapStore, explain_dataset, score_store

    ref_root, _, ref_score = reference
    root = tmp_path / "store"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(script), str(root), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    ms = MapStore.open(root)
    assert ms.done() == [0, 1]
    assert list(root.glob(".shard-00002.safetensors.*.tmp"))  # the torn write left its temporary file
    assert json.loads((root / "index.json").read_text())["complete"] is False

    m, ds = model(), data()
    run = explain_dataset({"m": m}, ds, METHODS, root, shard_size=SHARD, batch_size=BATCH)
    assert run.skipped == [0, 1] and run.computed == [2, 3, 4, 5]
    assert not list(root.glob(".*.tmp"))
    _assert_same_maps(root, ref_root)
    # a shard damaged on disk is recomputed, alone
    p = ms.shard_path(4)
    p.write_bytes(p.read_bytes()[:100])
    assert ms.missing() == [4]
    assert explain_dataset({"m": m}, ds, METHODS, root, shard_size=SHARD, batch_size=BATCH).computed == [4]
    _assert_same_maps(root, ref_root)
    again = explain_dataset({"m": m}, ds, METHODS, root, shard_size=SHARD, batch_size=BATCH)
    assert again.computed == [] and again.skipped == list(range(6))

    # scoring interrupted after shard 2, rerun: only 3..5, and the same scores
    def boom(i):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_store(root, METRICS, dataset=ds, models={"m": m}, options=OPTIONS, n_boot=20, on_shard=boom)
    assert not (root / "scores" / "scores.csv").exists()
    res = score_store(root, METRICS, dataset=ds, models={"m": m}, options=OPTIONS, n_boot=20)
    assert res["run"].skipped == [0, 1, 2] and res["run"].computed == [3, 4, 5]
    pd.testing.assert_frame_equal(pd.read_csv(root / "scores" / "scores.csv"),
                                  pd.read_csv(ref_root / "scores" / "scores.csv"), check_exact=True)
    assert json.loads((root / "scores" / "summary.json").read_text())["summary"] == \
        json.loads((ref_root / "scores" / "summary.json").read_text())["summary"]
    assert res["n_images"] == ref_score["n_images"] == N


# ----------------------------------------------------------------------------- refusals
def test_another_configuration_is_refused_unless_overwritten(reference, tmp_path):
    from medxai.distributed import explain_dataset, score_store

    m, ds = model(), data(10)
    root = tmp_path / "s"
    explain_dataset({"m": m}, ds, ["saliency"], root, shard_size=SHARD)
    with pytest.raises(ConfigError, match="another configuration"):
        explain_dataset({"m": m}, ds, ["gradcam"], root, shard_size=SHARD)
    with pytest.raises(ConfigError, match="another configuration"):
        explain_dataset({"m": model().train()}, ds, ["saliency"], root, shard_size=SHARD, dtype="float32")
    run = explain_dataset({"m": m}, ds, ["gradcam"], root, shard_size=SHARD, overwrite=True)
    assert run.computed == [0, 1]
    other = model()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(ConfigError, match="weights differ"):
        score_store(root, ["sparseness"], models={"m": other})
    with pytest.raises(ConfigError, match="not in the store"):
        score_store(root, ["sparseness"], models={"x": m})


def test_bad_input_is_refused_with_clear_errors(tmp_path):
    from medxai.distributed import explain_dataset, score_store

    m, ds = model(), data(6)
    with pytest.raises(ConfigError, match="dtype"):
        explain_dataset(m, ds, ["saliency"], tmp_path / "a", dtype="int8")
    with pytest.raises(ConfigError, match="target"):
        explain_dataset(m, ds, ["saliency"], tmp_path / "a", target="best")
    with pytest.raises(ConfigError, match="unknown"):
        explain_dataset(m, ds, ["no-such-method"], tmp_path / "a")
    with pytest.raises(ConfigError, match="shard_size"):
        explain_dataset(m, ds, ["saliency"], tmp_path / "a", shard_size=0)

    class Bright(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": torch.full((1, SIZE, SIZE), 1.5), "label": torch.tensor(0)}

    with pytest.raises(InputError, match=r"\[0, 1\]"):
        explain_dataset(m, Bright(), ["saliency"], tmp_path / "b")
    with pytest.raises(DataError, match="not a medxai store"):
        score_store(tmp_path / "nowhere", ["sparseness"])

    # an incomplete store is not scored
    def stop(i):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_dataset(m, ds, ["saliency"], tmp_path / "c", shard_size=2, on_shard=stop)
    with pytest.raises(DataError, match="2 of 3 shard"):
        score_store(tmp_path / "c", ["sparseness"])


# ----------------------------------------------------------------------------- sampler and environment
def test_sharded_sampler_splits_the_single_process_order():
    from medxai.distributed import DistInfo
    from medxai.train.ddp import ShardedSampler

    ds = list(range(11))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    single = list(RandomSampler(ds, generator=g1))
    assert list(ShardedSampler(ds, DistInfo(0, 1), generator=g2)) == single
    g = torch.Generator()
    shares = []
    for r in range(3):
        g.manual_seed(5)
        shares.append(list(ShardedSampler(ds, DistInfo(r, 3), generator=g)))
    assert [len(s) for s in shares] == [4, 4, 4]  # 11 padded to 12: the same number of steps per rank
    merged = [shares[k % 3][k // 3] for k in range(12)]
    assert merged == single + single[:1]
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    g1.manual_seed(7)
    g2.manual_seed(7)
    assert list(ShardedSampler(ds, DistInfo(0, 1), generator=g2, weights=w)) == \
        list(WeightedRandomSampler(w, 11, generator=g1))
    s = ShardedSampler(ds, DistInfo(1, 2), seed=3)  # no generator: seeded from (seed, epoch)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0 and sorted(set(e0) | set(list(ShardedSampler(ds, DistInfo(0, 2), seed=3)))) == ds


def test_environment_is_read_and_checked(monkeypatch):
    from medxai.distributed import current, env_info, setup

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert setup().world_size == 1 and not current().enabled and current().is_main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = env_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 2, 1, False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        setup()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="outside"):
        env_info()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="not an integer"):
        env_info()


# ----------------------------------------------------------------------------- CLI
def test_store_commands_explain_score_and_info(tmp_path, capsys):
    from medxai.cli import main
    from medxai.data import write_synthetic
    from medxai.distributed import MapStore, explain_dataset
    from medxai.train import fit, load_run

    root = tmp_path / "study"
    write_synthetic("cxr-pneumonia", root, {"train": 12, "test": 9}, size=SIZE)
    from medxai.data import open_dataset

    train = open_dataset(str(root), split="train")
    fit(model(), train, config={"task": "binary", "epochs": 1, "batch_size": 6}, run_dir=tmp_path / "std")
    store = tmp_path / "maps"
    main(["--quiet", "store", "explain", "--run", str(tmp_path / "std"), "--data", str(root), "--store", str(store),
          "--methods", "saliency,gradcam", "--shard-size", "4", "--batch-size", "3"])
    ms = MapStore.open(store)
    assert ms.n_shards == 3 and ms.done() == [0, 1, 2] and ms.keys == ["std/saliency", "std/gradcam"]
    assert ms.config["info"]["data"] == str(root) and ms.config["info"]["split"] == "test"
    # the same maps as the Python API on the same data
    m, _ = load_run(tmp_path / "std")
    test = open_dataset(str(root), split="test", size=SIZE)
    explain_dataset({"std": m}, test, ["saliency", "gradcam"], tmp_path / "api", shard_size=4, batch_size=3)
    for i in range(3):
        a, b = ms.read(i)[0], MapStore.open(tmp_path / "api").read(i)[0]
        assert torch.equal(a["maps/std/gradcam"], b["maps/std/gradcam"])
    main(["--quiet", "store", "score", "--store", str(store), "--metrics", "pointing_game,deletion,tv",
          "--options", "{deletion: {steps: 3}}", "--n-boot", "10"])
    df = pd.read_csv(store / "scores" / "scores.csv")
    assert set(df["metric"]) == {"pointing_game", "deletion", "total_variation"} and len(df) == 9 * 2 * 3
    capsys.readouterr()
    main(["store", "info", str(store)])
    text = capsys.readouterr().out
    assert "9 images, 3/3 shard(s) done" in text and "scores scores: 3/3" in text
    with pytest.raises(SystemExit) as exc:
        main(["--quiet", "store", "explain", "--run", str(tmp_path / "std"), "--data", str(root), "--store",
              str(store), "--methods", "saliency"])
    assert exc.value.code == 2
    assert "another configuration" in capsys.readouterr().err
