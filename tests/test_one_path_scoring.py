"""One scoring path: ``medxai score``, ``medxai store score`` and the audit's score stage give the
same per-sample scores for the same maps, masks and options, and skip the same images (those
without a mask) for the same reason."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from medxai._util.io import atomic_write_json, save_safetensors

METRICS = ["pointing_game", "energy_pointing_game", "mask_auroc", "relevance_rank_accuracy", "sparseness",
           "deletion", "road"]
N = 8

pytestmark = pytest.mark.usefixtures("one_thread")


def test_select_masks_one_rule():
    from medxai.metrics import select_masks

    m = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    m[:, 0, 0, 0] = True
    m[:, 1, 1, 1] = True
    sel = select_masks(m, torch.tensor([0, 1, 5]))
    assert sel[0, 0, 0] and not sel[0, 1, 1] and sel[1, 1, 1] and not sel[1, 0, 0]
    assert not sel[2].any()  # a class without a mask channel: no mask (never the last channel)
    assert torch.equal(select_masks(m[:, :1], torch.tensor([1, 1, 1])), m[:, 0])
    assert select_masks(None, torch.tensor([0])) is None


def test_score_store_and_audit_give_identical_per_sample_scores(tmp_path):
    from medxai.cli import main
    from medxai.data import open_dataset, write_synthetic
    from medxai.distributed import MapStore
    from medxai.metrics import NO_MASK, score_samples
    from medxai.models import create
    from medxai.pipeline.config import ScoreConfig
    from medxai.pipeline.data import eval_sample
    from medxai.pipeline.explanations import score_stage
    from medxai.runs import load_run
    from medxai.train import fit

    study = tmp_path / "study"
    write_synthetic("cxr-pneumonia", study, {"train": 8, "test": N}, size=32, seed=0)
    torch.manual_seed(0)
    fit(create("small-cnn", 2, in_chans=1), open_dataset(str(study), split="train"),
        config={"task": "binary", "epochs": 1, "batch_size": 8, "seed": 0}, run_dir=tmp_path / "run")
    model = load_run(tmp_path / "run", device="cpu")[0]
    store = tmp_path / "store"
    main(["--quiet", "store", "explain", "--run", str(tmp_path / "run"), "--data", str(study), "--methods",
          "saliency", "--store", str(store), "--dtype", "float32", "--shard-size", "3", "--device", "cpu"])
    # 1. medxai store score (3 shards of 3, 3, 2 images; batches of 2)
    main(["--quiet", "store", "score", "--store", str(store), "--metrics", ",".join(METRICS), "--n-boot", "10",
          "--batch-size", "2", "--device", "cpu"])
    ms = MapStore.open(store)
    shards = [ms.read(i) for i in range(ms.n_shards)]
    ids = [s for _, meta in shards for s in meta["ids"]]
    maps = torch.cat([t["maps/run/saliency"] for t, _ in shards])
    targets = torch.cat([t["targets/run"] for t, _ in shards])
    test = open_dataset(str(study), split="test")
    assert ids == [test[i]["id"] for i in range(N)]
    no_mask = [test[i]["id"] for i in range(N) if not test[i]["mask"].any()]
    assert no_mask and len(no_mask) < N  # both kinds of image are in the sample
    # 2. medxai score on a maps folder holding the same maps
    folder = tmp_path / "maps"
    images = torch.stack([test[i]["image"] for i in range(N)])
    save_safetensors(folder / "maps.safetensors", {"images": images, "targets/run": targets, "run/saliency": maps})
    atomic_write_json(folder / "maps.json", {
        "ids": ids, "data": str(study), "split": "test", "runs": {"run": {"dir": str(tmp_path / "run")}},
        "maps": {"run/saliency": {"run": "run", "method": "saliency", "output": "logit"}}})
    main(["--quiet", "score", "--maps", str(folder), "--out", str(tmp_path / "scores"), "--metrics",
          ",".join(METRICS), "--n-boot", "10", "--device", "cpu"])
    # 3. the audit's score stage
    stage = tmp_path / "stage"
    sample = eval_sample(test, N)  # the audit's (stratified) order: the same images, by id
    perm = [ids.index(i) for i in sample.ids]
    save_safetensors(stage / "maps.safetensors", {"maps": maps[perm], "targets": targets[perm]})
    audit = score_stage(tmp_path, model, sample, SimpleNamespace(dir=stage),
                        ScoreConfig(metrics=METRICS, shortcut=False), "binary")
    back = [sample.ids.index(i) for i in ids]  # audit values put back in the store's order

    a = pd.read_csv(store / "scores" / "scores.csv")
    b = pd.read_csv(tmp_path / "scores" / "scores.csv")
    cols = sorted(set(a.metric))
    assert cols == sorted(set(b.metric)) == sorted(audit["metrics"]) and "road_morf" in cols
    for col in cols:
        va = a[a.metric == col].set_index("id").loc[ids, "value"].to_numpy()
        vb = b[b.metric == col].set_index("id").loc[ids, "value"].to_numpy()
        vc = np.array([math.nan if v is None else v for v in audit["metrics"][col]["values"]])[back]
        np.testing.assert_allclose(va, vb, rtol=1e-6, equal_nan=True, err_msg=col)
        np.testing.assert_allclose(va, vc, rtol=1e-6, equal_nan=True, err_msg=col)
        assert np.isfinite(va).any(), col
    # images without a mask: NaN for every mask metric, the same reason on every path
    for col in ("pointing_game", "energy_pointing_game", "mask_auroc", "relevance_rank_accuracy"):
        assert np.isnan(a[(a.metric == col) & a.id.isin(no_mask)].value).all()
    want = {m: dict.fromkeys(no_mask, NO_MASK)
            for m in ("pointing_game", "energy_pointing_game", "mask_auroc", "relevance_rank_accuracy")}
    sa = json.loads((store / "scores" / "summary.json").read_text())["skipped_samples"]["run/saliency"]
    sb = json.loads((tmp_path / "scores" / "summary.json").read_text())["skipped_samples"]["run/saliency"]
    assert sa == sb == audit["skipped_samples"] == want
    # the library function itself, in one call
    direct = score_samples(maps, METRICS, ids=ids, images=images, masks=torch.stack(
        [test[i]["mask"] for i in range(N)]), targets=targets, model=model)
    np.testing.assert_allclose(direct.columns["deletion"].numpy(),
                               a[a.metric == "deletion"].set_index("id").loc[ids, "value"].to_numpy(), rtol=1e-6)
    assert direct.skipped_samples == want


def test_one_target_policy():
    from medxai.errors import ConfigError
    from medxai.explain.targets import check_target_rule, explanation_targets

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
    x = torch.tensor([[0.0, 2, 1, 0], [3, 0, 1, 0]]).reshape(2, 1, 2, 2)
    assert explanation_targets(model, x, "pred").tolist() == [1, 0]
    assert explanation_targets(model, x, "pred", top_k=2, batch_size=1).tolist() == [[1, 2], [0, 2]]
    assert explanation_targets(model, x, "label", [torch.tensor(2), 1]).tolist() == [2, 1]
    assert explanation_targets(model, x, "2").tolist() == [2, 2]
    assert check_target_rule("3") == 3
    for bad in ("best", -1, True):
        with pytest.raises(ConfigError, match="target"):
            explanation_targets(model, x, bad)
    with pytest.raises(ConfigError, match="single-label"):
        explanation_targets(model, x, "label", [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ConfigError, match="top_k"):
        explanation_targets(model, x, "label", [0, 1], top_k=2)


def test_the_audit_scores_the_same_default_metrics_as_the_commands():
    from medxai.metrics import DEFAULT_METRICS
    from medxai.pipeline.config import ScoreConfig

    assert ScoreConfig().metrics == list(DEFAULT_METRICS)
    assert "mask_auroc" in DEFAULT_METRICS  # the audit's own list left it out
