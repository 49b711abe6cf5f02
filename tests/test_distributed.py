"""torchrun with 2 gloo processes on CPU against 1 process: training (Python API and ``medxai train``),
distributed resume, and dataset-scale explanations and scores (``medxai.distributed``).

One torchrun launch (module fixture) runs every 2-process part; each test compares one of its
results with the same work done here in one process.

Tolerances: a net without BatchNorm trained on 2 x 8 images per step takes exactly the steps
of one process on 16 and reaches the same history up to float summation order (rtol 1e-4). With
BatchNorm and adversarial training (``medxai train``, small-cnn) the ranks normalise with their
own 8-image batch statistics and draw their own random starts, so the runs are not identical:
both must reach val accuracy >= 0.9, within 0.15 of each other, and val losses within 0.15.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # one_thread: conftest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # the torchrun command

N_TRAIN, N_VAL, N_TEST, SIZE = 64, 16, 23, 32
PER_RANK_BATCH = 8
PLAIN = {"task": "binary", "epochs": 3, "batch_size": PER_RANK_BATCH, "lr": 0.01, "seed": 3,
         "monitor": "val_loss"}
CLI_TRAIN = {"task": "binary", "epochs": 3, "batch_size": PER_RANK_BATCH, "lr": 0.01, "seed": 0,
             "monitor": "val_loss", "objective": {"name": "adversarial", "eps": "2/255", "steps": 2, "mix": 0.5}}
METHODS = ["saliency", "gradcam"]
METRICS = ["pointing_game", "energy_pointing_game", "mask_auroc", "sparseness", "deletion", "road"]
OPTIONS = {"deletion": {"steps": 4}, "road": {"percentages": [20, 60]}}
SHARD, BATCH = 5, 4

WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    import test_distributed as T
    from medxai import distributed
    from medxai.cli import main
    from medxai.distributed import explain_dataset, score_store
    from medxai.train import NonFiniteLossError, fit, load_run

    out = Path(sys.argv[1])
    info = distributed.setup()
    assert info.world_size == 2, info
    train, val = T.plain_data()
    res = fit(T.plain_net(), train, val, T.PLAIN, run_dir=out / "plain")
    cfg = T.write_cli_config(out, Path(sys.argv[3]), T.CLI_TRAIN)
    main(["--quiet", "train", "--config", str(cfg), "--out", str(out / "cli-full")])
    main(["--quiet", "train", "--config", str(cfg), "--out", str(out / "cli-resumed"), "--set", "train.epochs=2"])
    main(["--quiet", "train", "--resume", "--out", str(out / "cli-resumed"), "--set", "train.epochs=3"])
    model, _ = load_run(out / "cli-full")
    test = T.store_data()
    r = explain_dataset({"std": model}, test, T.METHODS, out / "store", shard_size=T.SHARD, batch_size=T.BATCH)
    s = score_store(out / "store", T.METRICS, dataset=test, models={"std": model}, options=T.OPTIONS, n_boot=50)
    try:  # NaN on rank 1 only, at its 2nd training forward: every rank must stop there (no hang)
        fit(T.NanOn(T.plain_net(), rank=1, at=2), train, val, {**T.PLAIN, "epochs": 1}, run_dir=out / "nan")
        stopped = None
    except NonFiniteLossError as exc:
        stopped = [exc.epoch, exc.step]
    stopped = distributed.gather_objects(stopped)
    if info.is_main:
        (out / "worker.json").write_text(json.dumps({
            "world_size": info.world_size, "plain_history": res.history,
            "explain_computed": r.computed, "score_computed": s["run"].computed, "nan_stopped": stopped}))
''')


# ----------------------------------------------------------------------------- shared with the worker
def plain_net() -> nn.Module:
    """No BatchNorm, no dropout: 2 processes x 8 images compute the gradient of 1 x 16."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(96, 2))


class NanOn(nn.Module):
    """NaN logits on its ``at``-th training forward, on process ``rank`` only."""

    def __init__(self, net: nn.Module, rank: int, at: int) -> None:
        super().__init__()
        self.net, self.rank, self.at, self.calls = net, rank, at, 0

    def forward(self, x):
        from medxai.distributed import current

        out = self.net(x)
        if self.training and current().rank == self.rank:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


def plain_data():
    from medxai.data import SyntheticDataset

    return (SyntheticDataset("cxr-pneumonia", N_TRAIN, size=SIZE, split="train"),
            SyntheticDataset("cxr-pneumonia", N_VAL, size=SIZE, split="val"))


def store_data():
    from medxai.data import SyntheticDataset

    return SyntheticDataset("cxr-pneumonia", N_TEST, size=SIZE, split="test", shortcut=0.8)


def write_folder_data(root: Path) -> Path:
    """A folder study a small CNN learns in a few epochs: class 1 has a bright square."""
    if (root / "train").is_dir():
        return root
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for k, cls in enumerate(("NORMAL", "PNEUMONIA")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n // 2):
                img = rng.integers(0, 110, (SIZE, SIZE), dtype=np.uint8)
                if k:
                    r, c = rng.integers(4, 16, 2)
                    img[r:r + 10, c:c + 10] = 235
                Image.fromarray(img).save(d / f"{cls.lower()}_{i}.png")
    return root


def write_cli_config(folder: Path, data_root: Path, train: dict, name: str = "config.yaml") -> Path:
    cfg = {"name": "t", "out": str(folder), "model": {"name": "small-cnn", "normalize": "none"},
           "data": {"train": str(data_root)}, "train": train}
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path




# ----------------------------------------------------------------------------- the torchrun launch
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Run the worker under ``torchrun --nproc_per_node=2`` (gloo, CPU); its folder and report."""
    out = tmp_path_factory.mktemp("two")
    data_root = write_folder_data(tmp_path_factory.mktemp("folder"))
    script = out / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [*TORCHRUN, "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(out), str(Path(__file__).parent), str(data_root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, data_root, json.loads((out / "worker.json").read_text())


def _steps(run: Path) -> tuple[int, list[float]]:
    from medxai.train import read_checkpoint

    ck = read_checkpoint(run / "last.safetensors")
    adam = [float(s["step"]) for s in ck.get("optimizer")["state"].values()]
    return int(ck.get("train")["global_step"]), adam


# ----------------------------------------------------------------------------- tests
def test_two_processes_train_like_one_with_the_global_batch(two, tmp_path):
    from medxai.train import fit

    out, _, rep = two
    assert rep["world_size"] == 2
    train, val = plain_data()
    one = fit(plain_net(), train, val, {**PLAIN, "batch_size": 2 * PER_RANK_BATCH}, run_dir=tmp_path / "one")
    per_epoch = -(-N_TRAIN // (2 * PER_RANK_BATCH))
    step, adam = _steps(out / "plain")
    assert step == PLAIN["epochs"] * per_epoch == _steps(tmp_path / "one")[0]
    assert set(adam) == {float(PLAIN["epochs"] * per_epoch)}  # optimizer updates on every parameter
    twos = rep["plain_history"]
    assert len(twos) == len(one.history) == PLAIN["epochs"]
    for a, b in zip(one.history, twos, strict=True):
        assert a.keys() == b.keys()
        for k in set(a) - {"time_s"}:  # every logged number: losses, accuracy, AUC, kappa, ECE, lr...
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6, nan_ok=True), k
    assert rep["nan_stopped"] == [[1, 2], [1, 2]]  # rank 1's NaN stopped both ranks at epoch 1, step 2
    lines = (out / "plain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]  # rank 0 alone wrote, once per epoch
    log = (out / "plain" / "train.log").read_text()
    assert log.count("epoch 3/3") == 1


def test_torchrun_medxai_train_matches_one_process_and_resumes(two, tmp_path):
    from medxai.cli import main
    from medxai.train import read_checkpoint

    out, data_root, _ = two
    cfg = write_cli_config(tmp_path, data_root, {**CLI_TRAIN, "batch_size": 2 * PER_RANK_BATCH})
    main(["--quiet", "train", "--config", str(cfg), "--out", str(tmp_path / "one")])
    hist1 = [json.loads(s) for s in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    hist2 = [json.loads(s) for s in (out / "cli-full" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist1) == len(hist2) == CLI_TRAIN["epochs"]
    a, b = hist1[-1], hist2[-1]
    assert a["val_accuracy"] >= 0.9 and b["val_accuracy"] >= 0.9, (a, b)
    assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 0.15
    assert abs(a["val_loss"] - b["val_loss"]) <= 0.15
    per_epoch = -(-N_TRAIN // (2 * PER_RANK_BATCH))
    assert _steps(out / "cli-full")[0] == CLI_TRAIN["epochs"] * per_epoch == _steps(tmp_path / "one")[0]
    assert set(_steps(out / "cli-full")[1]) == {float(CLI_TRAIN["epochs"] * per_epoch)}
    # distributed resume (2 epochs, then --resume to 3) == the uninterrupted 2-process run, bitwise
    full, resumed = out / "cli-full", out / "cli-resumed"
    for which in ("last", "best"):
        wa = read_checkpoint(full / f"{which}.safetensors").model_state
        wb = read_checkpoint(resumed / f"{which}.safetensors").model_state
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (which, k)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in hist2]
    hist_r = [json.loads(s) for s in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in hist_r]
    ranks = read_checkpoint(resumed / "last.safetensors").get("rng_ranks")
    assert isinstance(ranks, list) and len(ranks) == 2
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank its own random starts
    assert "resumed from last.safetensors after epoch 2" in (resumed / "train.log").read_text()


def test_two_process_maps_and_scores_equal_one_process(two, tmp_path):
    import pandas as pd

    from medxai._util.io import _jsonable
    from medxai.distributed import MapStore, explain_dataset, score_store
    from medxai.train import load_run

    out, _, rep = two
    n_shards = -(-N_TEST // SHARD)
    assert rep["explain_computed"] == list(range(n_shards)) == rep["score_computed"]
    model, _ = load_run(out / "cli-full")
    test = store_data()
    r = explain_dataset({"std": model}, test, METHODS, tmp_path / "store", shard_size=SHARD, batch_size=BATCH)
    assert r.computed == list(range(n_shards))
    s1 = score_store(tmp_path / "store", METRICS, dataset=test, models={"std": model}, options=OPTIONS, n_boot=50)
    one, two_ = MapStore.open(tmp_path / "store"), MapStore.open(out / "store")
    assert one.fingerprint == two_.fingerprint
    for i in range(n_shards):
        ta, ma = one.read(i)
        tb, mb = two_.read(i)
        assert ma == mb and ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (i, k)
    assert ta["maps/std/saliency"].dtype == torch.float16
    a = pd.read_csv(tmp_path / "store" / "scores" / "scores.csv")
    b = pd.read_csv(out / "store" / "scores" / "scores.csv")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    s2 = json.loads((out / "store" / "scores" / "summary.json").read_text())
    assert {m["metric"] for m in s2["metrics"].values()} == set(METRICS)
    assert json.loads(json.dumps(_jsonable(s1["summary"]))) == s2["summary"]
    assert not s2["skipped"]
