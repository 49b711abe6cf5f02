"""``medxai score``: score the maps written by ``medxai explain`` with metrics named in the registry.

Reads ``--maps DIR`` (``maps.safetensors``: ``images``, ``targets/RUN``, ``RUN/METHOD`` maps;
``maps.json``: ids, data spec, split, runs, per map its method and output), the lesion masks and
shortcut masks of the same images from ``--data`` (default: the spec in maps.json), the models
from ``--run`` (default: the run folders in maps.json) for the metrics that need them, and writes
into ``--out``:
- ``scores.csv``: one row per image x model x method x metric column (id, model, method,
  metric, value, category, higher_is_better); NaN where a score is undefined (empty mask).
- ``summary.json``: per (model, method, metric) n, n_nan, mean, median and a seeded bootstrap
  95% CI; each metric's metadata; the metrics skipped and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import app, progress, state
from medxai.errors import ConfigError, DataError

DEFAULT_METRICS = "pointing_game,energy_pointing_game,relevance_rank_accuracy,mask_auroc,sparseness,total_variation"


def _read_maps(folder: Path) -> tuple[dict, dict]:
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
    import torch

    if not spec:
        return {"masks": None, "shortcut_masks": None}
    try:
        from medxai.data import open_dataset
    except ImportError as exc:
        raise ConfigError(f"cannot open datasets: medxai.data.open_dataset is unavailable ({exc})") from None
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
        from medxai.data.datasets import stack_masks

        s = stack_masks(vals, size, key, where=spec)
        return s[:, 0] if ndim3 else s

    return {"masks": stack("mask", False), "shortcut_masks": stack("shortcut_mask", True)}


def _options(text: str | None) -> dict[str, dict[str, Any]]:
    import yaml

    from medxai._util.io import safe_yaml_load

    if not text:
        return {}
    try:
        opts = safe_yaml_load(Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text)
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"--options is not valid YAML/JSON: {exc}") from None
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ConfigError("--options must map metric names to keyword arguments, e.g. '{deletion: {steps: 50}}'")
    return opts


@app.command()
def score(
    maps: Path = typer.Option(..., "--maps", help="Folder written by `medxai explain`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for scores.csv and summary.json."),
    data: str | None = typer.Option(None, "--data", help="Dataset spec with the masks (default: maps.json's)."),
    run: list[Path] | None = typer.Option(None, "--run", help="Run folder for model-based metrics, matched to the "
                                          "maps' runs by folder name (default: the folders in maps.json)."),
    metrics: str = typer.Option(DEFAULT_METRICS, "--metrics", help="Comma-separated metric names or aliases "
                                "(e.g. pointing_game,energy,deletion,road)."),
    options: str | None = typer.Option(None, "--options", help="YAML/JSON (or a file) of per-metric keyword "
                                       "arguments, e.g. '{deletion: {steps: 50}, road: {percentages: [10, 50]}}'."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of per-image noise (ROAD)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Score explanation maps: localisation, faithfulness, randomisation, complexity and shortcut metrics."""
    import pandas as pd
    import torch

    from medxai._util.io import atomic_write_json, atomic_write_text
    from medxai._util.seed import derive_seed
    from medxai.metrics import ScoreContext, nan_reason, resolve, summarize

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise ConfigError("--metrics is empty")
    infos = [resolve(n) for n in names]  # unknown names fail first, listing the known ones
    infos = list({i.name: i for i in infos}.values())
    user_opts = {resolve(k).name: v for k, v in _options(options).items()}
    info, tensors = _read_maps(maps)
    ids = [str(i) for i in info["ids"]]
    images = tensors["images"].float()
    if images.shape[0] != len(ids):
        raise DataError(maps, f"{images.shape[0]} images but {len(ids)} ids")
    size = tuple(images.shape[-2:])
    ann = _annotations(data or info.get("data"), info.get("split", "test"), ids, size) \
        if any("mask" in i.needs or "shortcut_mask" in i.needs for i in infos) else {"masks": None,
                                                                                  "shortcut_masks": None}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    need_model = any("model" in i.needs for i in infos)
    run_dirs = {Path(r).resolve().name: Path(r) for r in (run or [])}
    models: dict[str, Any] = {}

    def model_for(rname: str):
        if not need_model:
            return None
        if rname not in models:
            from medxai.runs import load_run

            path = run_dirs.get(rname) or (Path(info["runs"][rname]["dir"]) if rname in info.get("runs", {}) else None)
            models[rname] = load_run(path, device=dev)[0] if path is not None and path.exists() else None
        return models[rname]

    road_seeds = [derive_seed(seed, "road", i) for i in ids]
    rows: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, str]] = {}
    meta: dict[str, dict[str, Any]] = {}
    with progress() as bar:
        task = bar.add_task("scoring", total=len(info["maps"]) * len(infos))
        for key, entry in info["maps"].items():
            rname, method = entry.get("run", key.split("/")[0]), entry.get("method", key.split("/")[-1])
            m = tensors[key].float()
            m = m[:, 0] if m.ndim == 4 and m.shape[1] == 1 else m
            targets = tensors.get(f"targets/{rname}", torch.as_tensor(entry.get("targets"))).long()
            masks = ann["masks"]
            if masks is not None:
                masks = masks[:, 0] if masks.shape[1] == 1 else masks[torch.arange(len(ids)), targets.clamp_max(
                    masks.shape[1] - 1)]
            mo = model_for(rname)
            out_kind = entry.get("output", "logit")

            def explainer(model_, x_, t_, method=method, out_kind=out_kind):
                from medxai.explain import explain

                kw = {} if out_kind == "logit" else {"output": out_kind}
                return explain(model_, x_, method, t_, **kw)

            opts = {k: dict(v) for k, v in user_opts.items()}
            opts.setdefault("road", {}).setdefault("seed", road_seeds)
            ctx = ScoreContext(maps=m.to(dev), images=images.to(dev), masks=None if masks is None else masks.to(dev),
                               shortcut_masks=None if ann["shortcut_masks"] is None else ann["shortcut_masks"].to(dev),
                               targets=targets.to(dev), model=mo, explainer=explainer, options=opts)
            for mi in infos:
                reason = mi.available(ctx)
                if reason is not None:
                    skipped.setdefault(key, {})[mi.name] = reason
                    bar.advance(task)
                    continue
                for col, vals in mi.compute(ctx).items():
                    meta[col] = {"metric": mi.name, "category": mi.category, "higher_is_better": mi.higher_is_better,
                                 "reference": mi.reference}
                    for sid, v in zip(ids, vals.detach().double().cpu().tolist(), strict=True):
                        rows.append({"id": sid, "model": rname, "method": method, "metric": col, "value": v,
                                     "category": mi.category, "higher_is_better": mi.higher_is_better})
                bar.advance(task)
    df = pd.DataFrame(rows, columns=["id", "model", "method", "metric", "value", "category", "higher_is_better"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scores.csv", df.to_csv(index=False))
    summary = summarize(df, by=("model", "method", "metric"), n_boot=n_boot, seed=seed) if len(df) else []
    for s in summary:
        s["nan_reason"] = nan_reason(s["metric"]) if s["n_nan"] else None
    atomic_write_json(out / "summary.json", {"maps": str(maps), "data": data or info.get("data"),
                                             "metrics": meta, "skipped": skipped, "n_images": len(ids),
                                             "n_boot": n_boot, "seed": seed, "summary": summary})
    if not state.quiet:
        typer.echo(f"wrote {len(df)} scores ({len(meta)} metric columns, {len(info['maps'])} maps) to {out}")
        for key, why in skipped.items():
            typer.echo(f"skipped for {key}: " + "; ".join(f"{k} ({v})" for k, v in why.items()))
