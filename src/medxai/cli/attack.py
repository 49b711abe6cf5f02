"""``medxai attack`` (success rate vs eps per model) and ``medxai corrupt`` (metrics per corruption
and level per model, or ``--gallery``: a PNG grid of corrupted examples).

attack writes ``OUT/attack.json`` (per run: ``medxai.attacks.evaluate``'s result) and
``OUT/attack.png`` (success rate vs eps, one line per model). corrupt writes
``OUT/corruption.json`` (per run, corruption and level: the task's metrics, the drop from clean,
mean corruption error) and ``OUT/corruption.png`` (heat map of the drop in the headline metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import Models, app, first_items, progress
from medxai.errors import ConfigError

_MODEL_HELP = "An outside model's card YAML (repeat for several), wherever --run is accepted."


def _check_size(x: Any, loaded: list) -> None:
    """Refuse images whose size differs from a model's input size (say --size instead of guessing)."""
    for name, _, info in loaded:
        trained = tuple(int(v) for v in (info.meta.get("image_size") or ()))
        if trained and tuple(x.shape[-2:]) != trained:
            raise ConfigError(f"model {name} takes {trained} images but the data are {tuple(x.shape[-2:])}; "
                              "pass --size to resize")


def _device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@app.command("attack")
def attack_command(
    run: list[Path] = typer.Option([], "--run", help="A training run directory (repeat for several models)."),
    model: list[Path] = typer.Option([], "--model", "-m", help=_MODEL_HELP),
    data: str = typer.Option(..., "--data", help="Dataset spec for medxai.data.open_dataset."),
    eps: str = typer.Option("0.2/255,0.4/255,0.6/255", "--eps", help="Comma-separated budgets, e.g. 0.2/255,0.4/255."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    steps: int = typer.Option(10, "--steps", min=1, help="PGD iterations."),
    step_size: str | None = typer.Option(None, "--step-size", help="Step size (default 2.5 * eps / steps)."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="Random restarts."),
    method: str = typer.Option("pgd", "--attack", help="pgd, apgd-ce, apgd-dlr or auto (APGD list for K classes)."),
    label: int | None = typer.Option(None, "--label", help="Multilabel: attack this output only."),
    n: int = typer.Option(256, "--n", min=1, help="Attack the first n images of the split."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    size: int | None = typer.Option(None, "--size", help="Resize + centre-crop to this size (default: as stored)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Output folder for attack.json and attack.png."),
) -> None:
    """Success rate, robust accuracy and prediction-change rate vs eps for one or more models (eps 0 added)."""
    import torch

    from medxai._util.io import atomic_write_json
    from medxai.attacks import evaluate, format_eps, parse_eps, parse_eps_list
    from medxai.attacks.plots import plot_success

    eps_list = sorted(set([0.0, *parse_eps_list(eps)]))
    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm must be linf or l2, got {norm!r}")
    dev = _device(device)
    models = Models.from_options(run, model)
    x, items, class_names = first_items(data, split, n, size if size or not models.cards else models.size(), models,
                                        seed)
    loaded = models.load(dev, class_names)
    y = torch.stack([torch.as_tensor(it["label"]) for it in items])
    _check_size(x, loaded)
    results: dict[str, dict] = {}
    with progress() as bar:
        task = bar.add_task("attacking", total=len(loaded))
        for name, model, info in loaded:
            r = evaluate(model, (x, y), eps_list, norm=norm, steps=steps,
                         step_size=None if step_size is None else parse_eps(step_size), attack=method,
                         restarts=restarts, task=info.task, label=label, batch_size=batch_size, seed=seed, device=dev)
            r["run_dir"], r["checkpoint"] = str(info.run_dir), str(info.checkpoint)
            results[name] = r
            bar.advance(task)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "attack.json", {"format": "medxai-attack-1", "data": data, "split": split, "n": len(x),
                                            "eps": eps_list, "eps_labels": [format_eps(e, norm) for e in eps_list],
                                            "norm": norm, "steps": steps, "runs": results})
    plot_success(results, out / "attack.png")
    for name, r in results.items():  # results print under -q too (it hides progress bars only)
        pairs = ", ".join(f"{format_eps(e, norm)}: {v:.1%}"
                          for e, v in zip(r["eps"], r["success_rate"], strict=True))
        typer.echo(f"{name}: clean accuracy {r['clean_accuracy']:.1%}; success rate {pairs}")
    typer.echo(f"wrote {out / 'attack.json'} and {out / 'attack.png'}")


@app.command("corrupt")
def corrupt_command(
    run: list[Path] = typer.Option([], "--run", help="A training run directory (repeat for several models)."),
    model: list[Path] = typer.Option([], "--model", "-m", help=_MODEL_HELP),
    data: str | None = typer.Option(None, "--data", help="Dataset spec for medxai.data.open_dataset."),
    names: str | None = typer.Option(None, "--names", help="Comma-separated corruptions (default: all)."),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Levels (capped at each corruption's maximum)."),
    gallery_only: bool = typer.Option(False, "--gallery", help="Only write gallery.png (first image of --data, "
                                      "or scikit-image's fundus photograph)."),
    n: int = typer.Option(256, "--n", min=1, help="Evaluate the first n images of the split."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    size: int | None = typer.Option(None, "--size", help="Resize + centre-crop to this size (default: as stored)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str | None = typer.Option(None, "--device"),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Output folder."),
) -> None:
    """Metrics per corruption and level (drop from clean, mean corruption error), or a gallery PNG."""
    import torch

    from medxai._util.io import atomic_write_json
    from medxai.corruptions import (
        REGISTRY,
        corruption_table,
        example_fundus,
        gallery,
        list_corruptions,
        max_severity,
        plot_drops,
        relative_ce,
    )

    chosen = [c.strip() for c in names.split(",") if c.strip()] if names else list_corruptions()
    for c in chosen:
        REGISTRY.get(c)
    try:
        levels = sorted({int(s) for s in severities.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--severities must be comma-separated integers, got {severities!r}") from None
    if not levels or levels[0] < 1:
        raise ConfigError(f"--severities must be integers >= 1, got {severities!r}")
    out.mkdir(parents=True, exist_ok=True)
    if gallery_only:
        x = first_items(data, split, 1, size)[0] if data else example_fundus(256)
        p = gallery(x, out / "gallery.png", names=chosen, severities=levels, seed=seed)
        typer.echo(f"wrote {p}")
        return
    if not (run or model) or data is None:
        raise ConfigError("medxai corrupt needs --run (or --model) and --data (or --gallery)")
    dev = _device(device)
    models = Models.from_options(run, model)
    x, items, class_names = first_items(data, split, n, size if size or not models.cards else models.size(), models,
                                        seed)
    loaded = models.load(dev, class_names)
    y = torch.stack([torch.as_tensor(it["label"]) for it in items])
    _check_size(x, loaded)
    results: dict[str, dict] = {}
    steps = sum(len([s for s in levels if s <= max_severity(c)]) for c in chosen) * len(loaded)
    if steps == 0:
        raise ConfigError(f"none of {chosen} has a level in {levels} (levels: 1-4 for the fundus faults, 1-5 else)")
    with progress() as bar:
        task = bar.add_task("corrupting", total=steps)
        for name, model, info in loaded:
            r = corruption_table(model, x, y, info.task, info.class_names, chosen, levels, seed=seed,
                                 batch_size=batch_size, on_step=lambda: bar.advance(task))
            r["run_dir"] = str(info.run_dir)
            results[name] = r
    for name, rel in relative_ce(results).items():  # ImageNet-C's relative CE against the first run
        results[name].update(rel)
    atomic_write_json(out / "corruption.json", {"format": "medxai-corruption-1", "data": data, "split": split,
                                                "n": len(x), "severities": levels, "seed": seed, "runs": results})
    plot_drops(results, out / "corruption.png")
    for name, r in results.items():
        typer.echo(f"{name}: clean {r['headline']} {r['clean'][r['headline']]:.3f}; mean drop "
                   f"{r['mean_drop']:.3f}; mean corruption error {r['mean_corruption_error']:.3f}")
    typer.echo(f"wrote {out / 'corruption.json'} and {out / 'corruption.png'}")
