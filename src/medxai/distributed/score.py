"""Score a ``MapStore`` shard by shard with metrics named in ``medxai.metrics.METRICS``.

Each rank scores every world-th missing shard of a ``ScoreStore`` (one float64 column per
run x method x metric column, per sample); then rank 0 streams the score shards into
``scores.csv`` (the long table of ``medxai score``) and ``summary.json`` (n, NaNs, mean, median,
bootstrap CI per model x method x metric, seeded as ``medxai score`` seeds them). Only one shard
of maps (and, for metrics that need them, of images) is in memory at a time. Every metric is
per sample (never normalised across a batch) and ROAD's noise is seeded per image id, so the
scores do not depend on the sharding or the number of processes.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medxai._util.dist import DistInfo, barrier, broadcast_object, setup
from medxai._util.io import atomic_write, atomic_write_json
from medxai._util.validate import check_images
from medxai.distributed.explain import StoreRun, _default_device, _plan, model_digest, run_shards
from medxai.distributed.store import MapStore, ScoreStore, fingerprint
from medxai.errors import ConfigError, DataError

__all__ = ["CSV_COLUMNS", "score_store"]

CSV_COLUMNS = ["id", "model", "method", "metric", "value", "category", "higher_is_better"]


def _score_shard(ms: MapStore, i: int, infos: list[Any], *, dataset: Dataset | None, models: Mapping[str, nn.Module],
                 options: Mapping[str, Mapping[str, Any]], seed: int, batch_size: int,
                 device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from medxai.explain import explain
    from medxai.metrics import score_samples

    tensors, meta = ms.read(i)
    ids = [str(s) for s in meta.get("ids", [])]
    index = tensors["index"]
    need_images = any(need in mi.needs for mi in infos for need in ("images", "model", "explainer"))
    images = None
    if need_images and dataset is not None:
        images = torch.stack([torch.as_tensor(dataset[int(j)]["image"], dtype=torch.float32) for j in index])
        check_images(images, f"images of shard {i}")
    methods = ms.config.get("methods", {})
    out: dict[str, torch.Tensor] = {}
    columns: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, str]] = {}
    skipped_samples: dict[str, dict[str, dict[str, str]]] = {}
    for rname in ms.config.get("runs", {}):
        targets = tensors[f"targets/{rname}"].long()
        for method, kw in methods.items():
            key = f"{rname}/{method}"

            def explainer(model_, x_, t_, method=method, kw=kw):
                return explain(model_, x_, method, t_, **kw)

            res = score_samples(tensors[f"maps/{key}"], infos, ids=ids, images=images, masks=tensors.get("masks"),
                                shortcut_masks=tensors.get("shortcut_masks"), targets=targets,
                                model=models.get(rname), explainer=explainer, options=options, seed=seed,
                                batch_size=batch_size, device=device,
                                spatial_dims=3 if tensors[f"maps/{key}"].ndim == 5 else 2)  # (N, 1, D, H, W): volumes
            for name, reason in res.skipped.items():
                mi = next(m for m in infos if m.name == name)
                if need_images and dataset is None and any(n in mi.needs for n in ("images", "model")):
                    reason += " (pass the dataset: --data)"
                skipped.setdefault(key, {})[name] = reason
            if res.skipped_samples:
                skipped_samples[key] = res.skipped_samples
            columns.update(res.meta)
            for col, v in res.columns.items():
                out[f"{key}/{col}"] = v
    return out, {"ids": ids, "columns": columns, "skipped": skipped, "skipped_samples": skipped_samples}


def _merge(ss: ScoreStore, out: Path, *, n_boot: int, seed: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Stream the score shards into scores.csv and summarise each model x method x metric."""
    import pandas as pd

    from medxai.metrics import summarize

    values: dict[tuple[str, str, str], list[np.ndarray]] = {}
    columns: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, str]] = {}
    skipped_samples: dict[str, dict[str, dict[str, str]]] = {}

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for _, tensors, meta in ss.iter_shards():
                ids = meta["ids"]
                columns.update(meta.get("columns", {}))
                for key, why in meta.get("skipped", {}).items():
                    skipped.setdefault(key, {}).update(why)
                for key, per in meta.get("skipped_samples", {}).items():
                    for name, by_id in per.items():
                        skipped_samples.setdefault(key, {}).setdefault(name, {}).update(by_id)
                for name, t in tensors.items():
                    rname, method, col = name.split("/", 2)
                    info = meta["columns"][col]
                    v = t.numpy()
                    values.setdefault((rname, method, col), []).append(v)
                    for sid, x in zip(ids, v.tolist(), strict=True):
                        w.writerow([sid, rname, method, col, repr(float(x)), info["category"],
                                    info["higher_is_better"]])

    atomic_write(out / "scores.csv", write)
    summary = []
    for (rname, method, col), parts in values.items():
        v = np.concatenate(parts)
        df = pd.DataFrame({"model": rname, "method": method, "metric": col, "value": v})
        summary.extend(summarize(df, by=("model", "method", "metric"), n_boot=n_boot, seed=seed))
    result = {**dict(extra), "metrics": columns, "skipped": skipped,
              "skipped_samples": skipped_samples, "n_images": ss.n, "n_boot": n_boot, "seed": seed,
              "summary": summary}
    atomic_write_json(out / "summary.json", result)
    return result


def score_store(store: str | Path, metrics: Sequence[str] | str, *, out: str | Path | None = None,
                dataset: Dataset | None = None, models: Mapping[str, nn.Module] | nn.Module | None = None,
                options: Mapping[str, Mapping[str, Any]] | None = None, n_boot: int = 1000, seed: int = 0,
                batch_size: int = 64, device: str | torch.device | None = None, overwrite: bool = False,
                progress: bool = False, on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score the maps of a complete ``MapStore`` with ``metrics`` (registry names or aliases).

    ``out``: the score folder (default ``STORE/scores``): ``shard-*.safetensors`` + index (a
    rerun scores only missing shards), then ``scores.csv`` and ``summary.json``. Masks come from
    the store; metrics that need images, the model or an explainer need ``dataset`` (the data the
    maps were made from) and ``models`` ({run name: module}; a lone module for one run). Metrics
    whose needs are not met are skipped and listed in the summary. ``options``: per-metric keyword
    arguments. Returns the summary (the content of summary.json) on every rank, plus ``run``
    (a ``StoreRun``: which score shards this call computed).
    """
    t0 = time.perf_counter()
    info: DistInfo = setup()
    ms = MapStore.open(store)
    ms.require_complete()
    from medxai.metrics import metric_infos

    infos = metric_infos(metrics)
    opts = {k: dict(v) for k, v in (options or {}).items()}
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    runs = list(ms.config.get("runs", {}))
    if isinstance(models, nn.Module):
        if len(runs) != 1:
            raise ConfigError(f"the store holds maps of {len(runs)} models {runs}; pass models as {{name: module}}")
        models = {runs[0]: models}
    models = dict(models or {})
    unknown = sorted(set(models) - set(runs))
    if unknown:
        raise ConfigError(f"models {unknown} are not in the store (it has {runs})")
    dev = torch.device(device) if device is not None else _default_device(info)
    for name, m in models.items():
        m.to(dev).eval()
        if model_digest(m) != ms.config["runs"][name]:
            raise ConfigError(f"model {name!r} is not the model whose maps the store holds (weights differ)")
    if dataset is not None and len(dataset) != ms.n:  # type: ignore[arg-type]
        raise DataError(None, f"the dataset has {len(dataset)} samples but the store {ms.n}")  # type: ignore[arg-type]
    out = Path(out) if out is not None else ms.root / "scores"
    available = {"dataset": dataset is not None, "models": sorted(models)}
    cfg = {"maps": ms.fingerprint, "metrics": [i.name for i in infos], "options": opts, "seed": seed, **available}
    ss = ScoreStore(out, n=ms.n, shard_size=ms.shard_size, fingerprint=fingerprint({"kind": "scores", **cfg}),
                    config=cfg)
    missing = _plan(ss, overwrite, info)  # type: ignore[arg-type]
    computed = run_shards(ss, missing, info, "scoring", lambda i: _score_shard(
        ms, i, infos, dataset=dataset, models=models, options=opts, seed=seed, batch_size=batch_size, device=dev),
        on_shard=on_shard, progress=progress)
    barrier()
    result = None
    if info.is_main:
        ss.mark()
        result = _merge(ss, out, n_boot=n_boot, seed=seed, extra={"store": str(ms.root), "maps_config": ms.config})
    result = broadcast_object(result)
    result["run"] = StoreRun(root=out, n_shards=ss.n_shards, computed=computed,
                             skipped=sorted(set(range(ss.n_shards)) - set(missing)),
                             seconds=time.perf_counter() - t0, world_size=info.world_size)
    return result
