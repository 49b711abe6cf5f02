"""``medxai audit``, ``medxai demo`` and ``medxai report``: the main job."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import typer
from rich.console import Console

from medxai.cli._app import app, state


def _console() -> Console:
    return Console(quiet=state.quiet, highlight=False)


def _run(cfg_source, out: Path, synthetic: bool | None, force: list[str], overrides: list[str]) -> None:
    from medxai.pipeline.audit import run_audit
    from medxai.pipeline.config import load_config

    con = _console()
    cfg = load_config(cfg_source, overrides)
    t0 = time.perf_counter()
    with con.status("[bold]auditing[/]") as status:
        def log(msg: str) -> None:
            status.update(f"[bold]auditing[/] · {msg}")
            con.log(msg)

        res = run_audit(cfg, out, synthetic=synthetic, force=set(force), log=log)
    con.rule("[bold]findings")
    for f in res.findings:
        con.print(f"• {f['text']}", markup=False)
    con.print(f"\nreport: {res.report_html}  ({time.perf_counter() - t0:.0f} s)", markup=False)


@app.command()
def audit(
    config: Path = typer.Option(..., "--config", "-c", help="Study YAML (see examples/)."),
    out: Path = typer.Option(Path("runs/audit"), "--out", "-o", help="Run directory."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Run on the study's synthetic stand-in."),
    force: list[str] = typer.Option([], "--force", help="Recompute a stage (train, explain/robust/ig, all...)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key.sub=value."),
) -> None:
    """Audit models end to end: train, evaluate, attack, corrupt, explain, score, report."""
    _run(config, out, True if synthetic else None, force, set_)


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
def report(run_dir: Path = typer.Argument(..., help="An audit's run directory.")) -> None:
    """Rebuild report.html from the run's report.json."""
    from medxai.report import build_report

    _console().print(f"report: {build_report(run_dir)}", markup=False)
