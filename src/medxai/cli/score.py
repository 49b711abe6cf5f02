"""``medxai score``: score the maps written by ``medxai explain`` with metrics named in the registry.

Reads ``--maps DIR`` (``maps.safetensors`` + ``maps.json`` of ``medxai explain``), the lesion and
shortcut masks of the same images from ``--data`` (default: the spec in maps.json), the models
from ``--run`` (default: the run folders in maps.json) for the metrics that need them, and writes
into ``--out``:
- ``scores.csv``: one row per image x model x method x metric column (id, model, method,
  metric, value, category, higher_is_better); NaN where a score is undefined (empty mask).
- ``summary.json``: per (model, method, metric) n, n_nan, mean, median and a seeded bootstrap
  95% CI; each metric's metadata; the metrics skipped and why; the images skipped per metric
  and why (``skipped_samples``: images without a mask).

The scoring itself is ``medxai.metrics.score_maps`` (``score_samples`` per map), the same path as
``medxai store score`` and the audit.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medxai.cli._app import app, parse_metric_options, progress


@app.command()
def score(
    maps: Path = typer.Option(..., "--maps", help="Folder written by `medxai explain`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for scores.csv and summary.json."),
    data: str | None = typer.Option(None, "--data", help="Dataset spec with the masks (default: maps.json's)."),
    run: list[Path] | None = typer.Option(None, "--run", help="Run folder for model-based metrics, matched to the "
                                          "maps' runs by folder name (default: the folders in maps.json)."),
    model: list[Path] | None = typer.Option(None, "--model", "-m", help="An outside model's card YAML, matched to "
                                            "the maps' models by the card's file name (default: maps.json's)."),
    metrics: str | None = typer.Option(None, "--metrics", help="Comma-separated metric names or aliases (e.g. "
                                       "pointing_game,energy,deletion,road; default: medxai.metrics.DEFAULT_METRICS)."),
    options: str | None = typer.Option(None, "--options", help="YAML/JSON (or a file) of per-metric keyword "
                                       "arguments, e.g. '{deletion: {steps: 50}, road: {percentages: [10, 50]}}'."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of per-image noise (ROAD)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Score explanation maps: localisation, faithfulness, randomisation, complexity and shortcut metrics."""
    from medxai._util.io import atomic_write_json, atomic_write_text
    from medxai.metrics import DEFAULT_METRICS, metric_infos
    from medxai.metrics.maps_folder import score_maps

    opts = parse_metric_options(options)
    infos = metric_infos(DEFAULT_METRICS if metrics is None else metrics)  # unknown names fail before anything is read
    with progress() as bar:
        task = bar.add_task("scoring", total=None)
        df, summary = score_maps(maps, [i.name for i in infos], data=data, runs=run, cards=model, options=opts,
                                 n_boot=n_boot, seed=seed, device=device,
                                 on_step=lambda n: bar.update(task, total=n, advance=1))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scores.csv", df.to_csv(index=False))
    atomic_write_json(out / "summary.json", summary)
    n_maps = len({(m, k) for m, k in zip(df["model"], df["method"], strict=True)})
    typer.echo(f"wrote {len(df)} scores ({len(summary['metrics'])} metric columns, {n_maps} maps) to {out}")
    for key, why in summary["skipped"].items():
        typer.echo(f"skipped for {key}: " + "; ".join(f"{k} ({v})" for k, v in why.items()))
    for key, per in summary["skipped_samples"].items():
        typer.echo(f"images without a mask for {key}: " + "; ".join(f"{k} ({len(v)})" for k, v in per.items()))
