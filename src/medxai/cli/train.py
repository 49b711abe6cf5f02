"""``medxai train`` and ``medxai evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import app, state
from medxai.errors import ConfigError, ModelError


def _open(spec: str, split: str | None, options: dict[str, Any]) -> Any:
    from medxai.data import open_dataset

    return open_dataset(spec, split=split, **options)


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)  # results print under -q too: it hides progress bars only


def build_model(cfg: Any, train_data: Any) -> Any:
    """The model of a ``RunConfig`` for a dataset: ``medxai.models.create`` (+ freeze, + ordinal head)."""
    from medxai.models import OrdinalHead, create, freeze

    classes = list(getattr(train_data, "class_names", None) or [])
    if not classes:
        raise ConfigError("the training dataset does not name its classes (.class_names)")
    first = train_data[0]
    image = first["image"] if isinstance(first, dict) else first[0]
    in_chans = cfg.model.in_chans or int(image.shape[0])
    ordinal = cfg.train.ordinal
    n_out = 1 if ordinal != "ce" else len(classes)
    model = create(cfg.model.name, n_out, in_chans, pretrained=cfg.model.pretrained,
                   normalize=cfg.model.normalize if cfg.model.normalize is not None else "none", **cfg.model.params)
    if cfg.model.freeze is not None:
        freeze(model, until=cfg.model.freeze)
    if ordinal != "ce":
        model = OrdinalHead(model, ordinal, len(classes))
    return model


@app.command("train")
def train_command(
    config: Path = typer.Option(None, "--config", "-c", help="Run config YAML (name, model, data, train)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set train.lr=1e-3 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/last.safetensors."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: OUT/NAME from the config)."),
) -> None:
    """Train a model from a YAML config; writes a run directory (checkpoints, metrics, logs).

    Under ``torchrun --nproc_per_node=N --no-python medxai train ...`` it trains with
    DistributedDataParallel (``train.batch_size`` per process); rank 0 writes and prints.
    Ctrl-C stops with exit code 130 and one line saying how to resume."""
    from medxai import distributed
    from medxai.train.config import load_run_config

    if config is None:
        if not (resume and out is not None):
            raise ConfigError("--config is required (or --resume --out RUN to reuse RUN/config.yaml)")
        config = out / "config.yaml"
    cfg = load_run_config(config, overrides, options=True)  # every section checked before any data is read
    run_dir = out if out is not None else Path(cfg.out) / cfg.name
    if not resume and (run_dir / "last.safetensors").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (run_dir / "last.safetensors").exists():
        raise ConfigError(f"--resume: {run_dir / 'last.safetensors'} does not exist")
    dist_info = None
    try:
        dist_info = distributed.setup()  # one process unless torchrun set WORLD_SIZE > 1
        _train(cfg, run_dir, resume, dist_info.is_main)
    except KeyboardInterrupt as exc:
        if dist_info is None or dist_info.is_main:
            typer.echo(_interrupted_line(exc, run_dir, config), err=True)
        raise SystemExit(130) from None


def _train(cfg: Any, run_dir: Path, resume: bool, is_main: bool) -> None:
    """Open the data, build the model, ``fit`` and print the one-line summary (rank 0)."""
    from medxai._util.seed import seed_everything
    from medxai.train import fit

    opts = dict(cfg.data.options)
    train_data = _open(cfg.data.train, cfg.data.train_split, opts)
    val_data = None
    if cfg.data.val is not None or cfg.data.val_split is not None:
        val_data = _open(cfg.data.val or cfg.data.train, cfg.data.val_split, opts)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, train_data)
    meta = {"data": cfg.data.model_dump(mode="json")}
    result = fit(model, train_data, val_data, cfg.train, run_dir=run_dir, resume=resume,
                 progress=not state.quiet, meta=meta, full_config=cfg.model_dump(mode="json"))
    if not is_main:
        return
    best = "-" if result.best_value is None else f"{result.best_value:.4f}"
    _console().print(f"run {run_dir}: {result.epochs_run} epoch(s), best {result.monitor} {best} "
                     f"at epoch {result.best_epoch}, {result.train_time_s:.1f}s"
                     + (" (stopped early)" if result.stopped_early else ""))


def _interrupted_line(exc: BaseException, run_dir: Path, config: Path) -> str:
    """What a Ctrl-C leaves and how to go on: resume from last.safetensors, or start again."""
    from medxai.train import TrainingInterrupted

    if (run_dir / "last.safetensors").is_file():
        at = f"at epoch {exc.epoch}" if isinstance(exc, TrainingInterrupted) else "before training started"
        done = f" ({exc.epochs_done} epoch(s) saved)" if isinstance(exc, TrainingInterrupted) else ""
        return f"interrupted {at}{done}; resume with medxai train --resume --out {run_dir}"
    at = f"at epoch {exc.epoch}, " if isinstance(exc, TrainingInterrupted) else ""
    return (f"interrupted {at}before any checkpoint was written; start again with "
            f"medxai train --config {config} --out {run_dir}")


@app.command("evaluate")
def evaluate_command(
    run: Path | None = typer.Option(None, "--run", help="Run directory written by medxai train."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Or an outside model's card YAML."),
    data: str = typer.Option(..., "--data", help="Dataset spec (folder or spec string) to evaluate on."),
    split: str = typer.Option("test", "--split", help="Split of the dataset."),
    out: Path = typer.Option(None, "--out", "-o", help="Where eval.json and predictions.csv go (default: the run)."),
    which: str = typer.Option("best", "--which", help="Checkpoint: best or last."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the 95% CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option(None, "--device", help="cpu, cuda... (default: cpu)."),
) -> None:
    """Evaluate a trained run or an outside model: metrics with bootstrap CIs (eval.json) and predictions.csv."""
    from medxai.evaluate import evaluate_model, evaluate_run
    from medxai.runs import read_model_json

    if (run is None) == (model is None):
        raise ConfigError("medxai evaluate needs one model: --run RUN_DIR or --model CARD.yaml")
    if run is not None:
        meta = read_model_json(run)
        opts = dict((meta.get("data") or {}).get("options") or {})
        dataset = _open(data, split, opts)
        trained = [str(c) for c in meta["class_names"]]
        if sorted(trained) != sorted(str(c) for c in dataset.class_names):
            raise ModelError(f"run {run} was trained on the classes {trained}, the data have "
                             f"{list(dataset.class_names)} (classes are matched by name)")
        if list(dataset.class_names) != trained:  # the run's output order, by name
            dataset = _open(data, split, {**opts, "classes": trained})
        res = evaluate_run(run, dataset, out=out, which=which, batch_size=batch_size, device=device,
                           n_boot=n_boot, seed=seed)
    else:
        from medxai.cards import data_class_order, load_card, read_card

        card = read_card(model)
        opts = {"size": card.input.size[0], "channels": card.input.channels}
        dataset = _open(data, split, opts)
        order = data_class_order({model.stem: card}, list(dataset.class_names), dataset.task)
        if order is not None:
            dataset = _open(data, split, {**opts, "classes": order})
        net, info = load_card(card, device=device, class_order=list(dataset.class_names))
        out = out or model.parent
        res = evaluate_model(net, info, dataset, out=out, batch_size=batch_size, device=device, n_boot=n_boot,
                             seed=seed)
    con = _console()
    con.print(f"{res['task']} evaluation of {run or model} on {data} [{split}], n={res['n']}"
              + (f", positive class {res['positive_class']}" if res.get("positive_class") else "") + ":")
    for key, value in res["metrics"].items():
        ci = res["ci"].get(key)
        shown = "nan" if value is None or value != value else f"{value:.4f}"
        if ci and ci.get("low") is not None:
            shown += f"  [{ci['low']:.4f}, {ci['high']:.4f}]"
        con.print(f"  {key:<20} {shown}")
    for kind, items in res["skipped"].items():
        for item in items:
            con.print(f"  skipped {kind} of {item['label']}: {item['reason']}")
    con.print(f"wrote {Path(out or run) / 'eval.json'} and predictions.csv")
