"""``medxai audit``, ``medxai demo`` and ``medxai report``: the main job."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console

from medxai.cli._app import app, card_names, state


def _console() -> Console:
    """Results and the report's path always print; ``-q`` hides only the spinner and the stage log."""
    return Console(highlight=False)


def _run(cfg_source, out: Path, synthetic: bool | None, force: list[str], overrides: list[str]) -> None:
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    con = _console()
    cfg = load_config(cfg_source, overrides)
    t0 = time.perf_counter()
    if state.quiet:
        res = run_audit(cfg, out, synthetic=synthetic, force=set(force), log=lambda msg: None)
    else:
        with con.status("[bold]auditing[/]") as status:
            def log(msg: str) -> None:
                status.update(f"[bold]auditing[/] · {msg}")
                con.log(msg)

            res = run_audit(cfg, out, synthetic=synthetic, force=set(force), log=log)
    pos = res.report.get("data", {}).get("positive_class")
    if pos:
        con.print(f"binary metrics take {pos!r} as the positive class", markup=False)
    _print_scorecard(con, res.report.get("scorecard") or {})
    con.rule("[bold]findings")
    for f in res.findings:
        con.print(f"• {f['text']}", markup=False)
    con.print(f"\nreport: {res.report_html}  ({time.perf_counter() - t0:.0f} s)", markup=False, soft_wrap=True)


_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "not measured": "dim"}


def _print_scorecard(con: Console, sc: dict) -> None:
    """One table per model: dimension, value with CI, status (and why), then the verdict in words."""
    from rich.markup import escape
    from rich.table import Table

    for name, card in sc.get("models", {}).items():
        table = Table(title=f"scorecard: {name}", title_justify="left", show_lines=False)
        for col in ("dimension", "measure", "value", "95% CI", "status"):
            table.add_column(col)
        for row in card["rows"]:
            v = "-" if row["value"] is None else f"{row['value']:.3f}"
            ci = "-" if row["ci_low"] is None or row["ci_high"] is None else f"{row['ci_low']:.2f}-{row['ci_high']:.2f}"
            status = row["status"] + (f" ({row['reason']})" if row.get("reason") else "")
            table.add_row(row["dimension"], row["metric"], v, ci, f"[{_STYLE[row['status']]}]{escape(status)}[/]")
        con.print(table)
        con.print(card["verdict"], markup=False)


def _raw_config(config: Path | None, models: list[Path], data: str | None, split: str | None,
                positive: str | None = None) -> dict:
    """The config mapping: ``--config`` (or the defaults), plus ``--model`` cards and ``--data``."""
    from medxai.pipeline.config import read_config_dict

    raw = read_config_dict(config) if config else {"name": "audit"}
    if models:
        listed = list(raw.get("models") or [])
        names = card_names(models, [str(m.get("name")) for m in listed if isinstance(m, dict)])
        raw["models"] = listed + [{"name": n, "card": str(p)} for n, p in zip(names, models, strict=True)]
    if data is not None or split is not None or positive is not None:
        section = dict(raw.get("data") or {})
        if positive is not None:
            section["positive_class"] = positive
        if data is not None:
            section.update(spec=data, use="real")
        if split is not None:
            section["split"] = split
        raw["data"] = section
    return raw


@app.command()
def audit(
    config: Path | None = typer.Option(None, "--config", "-c", help="Study YAML (see examples/)."),
    model: list[Path] = typer.Option([], "--model", "-m", help="An outside model's card YAML (repeat for several); "
                                     "audited as it is, without training."),
    data: str | None = typer.Option(None, "--data", help="Dataset spec (folder or YAML) to audit on."),
    split: str | None = typer.Option(None, "--split", help="The split audited (default: test)."),
    positive_class: str | None = typer.Option(None, "--positive-class", help="Binary: the positive class (default: "
                                              "the cards', else the data's second class)."),
    out: Path = typer.Option(Path("runs/audit"), "--out", "-o", help="Run directory."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Run on the study's synthetic stand-in."),
    force: list[str] = typer.Option([], "--force", help="Recompute a stage (train, explain/robust/ig, all...)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key.sub=value."),
) -> None:
    """Audit models end to end: train (or load outside models' cards), evaluate, attack, corrupt,
    explain, score, report."""
    from medxai.errors import ConfigError

    if config is None and not model:
        raise ConfigError("medxai audit needs --config STUDY.yaml or --model CARD.yaml (with --data DATA)")
    if model and config is None and data is None and not synthetic:
        raise ConfigError("medxai audit --model needs --data DATA (the dataset to audit the model on)")
    _run(_raw_config(config, model, data, split, positive_class), out, True if synthetic else None, force, set_)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory."),
    force: list[str] = typer.Option([], "--force", help="Recompute a stage."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key.sub=value."),
) -> None:
    """The embedded default audit: a synthetic pneumonia study with a shortcut, standard vs robust CNN."""
    from medxai._util.io import safe_yaml_load

    raw = safe_yaml_load(resources.files("medxai.configs").joinpath("demo.yaml").read_text(encoding="utf-8"))
    _run(raw, out, True, force, set_)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="An audit's run directory."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for report.html (default: the run directory)."),
) -> None:
    """Rebuild report.html from the run's report.json."""
    from medxai.report import build_report

    _console().print(f"report: {build_report(run_dir, out=out)}", markup=False, soft_wrap=True)  # one line
