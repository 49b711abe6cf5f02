"""Scoring a maps folder written by ``medxai explain`` (the library side of ``medxai score``).

``maps.safetensors``: ``images``, ``targets/RUN``, ``RUN/METHOD`` maps; ``maps.json``: ids, data
spec, split, runs, per map its method and output. Masks come from the dataset spec, models
from the run folders (for the metrics that need them); every (run, method) goes through
``score_samples``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medxai.errors import DataError
from medxai.metrics.registry import nan_reason
from medxai.metrics.scoring import metric_infos, score_samples
from medxai.metrics.statistics import summarize

__all__ = ["CSV_COLUMNS", "load_model", "read_maps", "score_maps"]

CSV_COLUMNS = ["id", "model", "method", "metric", "value", "category", "higher_is_better"]


def read_maps(folder: Path) -> tuple[dict, dict]:
    """(maps.json, tensors of maps.safetensors) of a folder written by ``medxai explain``."""
    from safetensors import safe_open

    js, st = folder / "maps.json", folder / "maps.safetensors"
    for p in (js, st):
        if not p.is_file():
            raise DataError(p, "missing: --maps must be a folder written by `medxai explain`")
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        with safe_open(str(st), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, ValueError) as exc:
        raise DataError(folder, f"cannot read the maps: {exc}") from None
    if "images" not in tensors or not isinstance(info.get("maps"), dict) or "ids" not in info:
        raise DataError(folder, "not a medxai maps folder (needs images, maps and ids)")
    return info, tensors


def _annotations(spec: str | None, split: str, ids: list[str], size: tuple[int, int]) -> dict[str, Any]:
    """Masks (N, K, H, W) bool and shortcut masks (N, H, W) of the images ``ids`` (None if absent)."""
    if not spec:
        return {"masks": None, "shortcut_masks": None}
    from medxai.data import open_dataset
    from medxai.data.datasets import stack_masks

    ds = open_dataset(spec, split=split, size=size[0])
    want = {i: k for k, i in enumerate(ids)}
    found: dict[int, dict] = {}
    for j in range(len(ds)):
        item = ds[j]
        k = want.get(str(item.get("id", j)))
        if k is not None:
            found[k] = item
            if len(found) == len(ids):
                break
    if len(found) < len(ids):
        missing = [i for i, k in want.items() if k not in found][:5]
        raise DataError(spec, f"images {missing} of the maps are not in split {split!r}")

    def stack(key: str, ndim3: bool) -> torch.Tensor | None:
        vals = [found[k].get(key) for k in range(len(ids))]
        if all(v is None for v in vals):
            return None
        s = stack_masks(vals, size, key, where=spec)
        return s[:, 0] if ndim3 else s

    return {"masks": stack("mask", False), "shortcut_masks": stack("shortcut_mask", True)}


def load_model(path: Path, device: torch.device, class_names: list[str] | None) -> Any:
    """A run directory's model, or an outside model from its card (``.yaml``), outputs in ``class_names``' order."""
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from medxai.cards import load_card

        return load_card(path, device=device, class_order=class_names)[0]
    from medxai.runs import load_run

    return load_run(path, device=device)[0]


def score_maps(maps: Path, metrics: Sequence[str] | str, *, data: str | None = None,
               runs: Sequence[Path] | None = None, cards: Sequence[Path] | None = None,
               options: Mapping[str, Mapping[str, Any]] | None = None,
               n_boot: int = 1000, seed: int = 0, device: str | torch.device | None = None,
               on_step: Callable[[int], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Score every map of a ``medxai explain`` folder: (the long scores table, the summary).

    The table has ``CSV_COLUMNS``; the summary per (model, method, metric) n, n_nan, mean, median
    and a seeded bootstrap CI, each column's metadata, the metrics skipped per map (``skipped``)
    and the samples skipped per map and metric (``skipped_samples``). ``on_step(total)`` is called
    once per map x metric, with the number of steps (a progress bar).
    """
    import pandas as pd

    from medxai.metrics.registry import resolve

    infos = metric_infos(metrics)
    user_opts = {resolve(k).name: dict(v) for k, v in (options or {}).items()}
    info, tensors = read_maps(maps)
    ids = [str(i) for i in info["ids"]]
    images = tensors["images"].float()
    if images.shape[0] != len(ids):
        raise DataError(maps, f"{images.shape[0]} images but {len(ids)} ids")
    size = tuple(images.shape[-2:])
    need_ann = any("mask" in i.needs or "shortcut_mask" in i.needs for i in infos)
    ann = _annotations(data or info.get("data"), info.get("split", "test"), ids, size) if need_ann \
        else {"masks": None, "shortcut_masks": None}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    need_model = any("model" in i.needs for i in infos)
    run_dirs = {Path(r).resolve().name: Path(r) for r in (runs or [])}
    run_dirs.update({Path(c).stem: Path(c) for c in (cards or [])})
    models: dict[str, Any] = {}

    def model_for(rname: str) -> Any:
        if not need_model:
            return None
        if rname not in models:
            path = run_dirs.get(rname) or (Path(info["runs"][rname]["dir"]) if rname in info.get("runs", {}) else None)
            classes = info.get("runs", {}).get(rname, {}).get("class_names")
            models[rname] = load_model(path, dev, classes) if path is not None and path.exists() else None
        return models[rname]

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"maps": str(maps), "data": data or info.get("data"), "metrics": {}, "skipped": {},
                               "skipped_samples": {}}
    for key, entry in info["maps"].items():
        rname, method = entry.get("run", key.split("/")[0]), entry.get("method", key.split("/")[-1])
        targets = tensors.get(f"targets/{rname}")
        if targets is None:
            if entry.get("targets") is None:
                raise DataError(maps, f"no targets for {key} (targets/{rname} or maps.json's targets)")
            targets = torch.as_tensor(entry["targets"])
        targets = targets.long()
        out_kind = entry.get("output", "logit")

        def explainer(model_, x_, t_, method=method, out_kind=out_kind):
            from medxai.explain import explain

            kw = {} if out_kind == "logit" else {"output": out_kind}
            return explain(model_, x_, method, t_, **kw)

        res = score_samples(tensors[key], infos, ids=ids, images=images, masks=ann["masks"],
                            shortcut_masks=ann["shortcut_masks"], targets=targets, model=model_for(rname),
                            explainer=explainer, options=user_opts, seed=seed, device=dev)
        if res.skipped:
            summary["skipped"][key] = res.skipped
        if res.skipped_samples:
            summary["skipped_samples"][key] = res.skipped_samples
        summary["metrics"].update(res.meta)
        for col, vals in res.columns.items():
            m = res.meta[col]
            rows.extend({"id": sid, "model": rname, "method": method, "metric": col, "value": v,
                         "category": m["category"], "higher_is_better": m["higher_is_better"]}
                        for sid, v in zip(res.ids, vals.tolist(), strict=True))
        for _ in infos:
            if on_step is not None:
                on_step(len(info["maps"]) * len(infos))
    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
    stats = summarize(df, by=("model", "method", "metric"), n_boot=n_boot, seed=seed) if len(df) else []
    for s in stats:
        s["nan_reason"] = nan_reason(s["metric"]) if s["n_nan"] else None
    summary.update(n_images=len(ids), n_boot=n_boot, seed=seed, summary=stats)
    return df, summary

