"""The typer application object and the global options (--quiet, --debug)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from medxai._util.progress import progress, set_quiet

__all__ = ["app", "progress", "run_names", "state"]


@dataclass
class State:
    quiet: bool = False
    debug: bool = False


state = State()

app = typer.Typer(
    name="medxai",
    help="Audit medical image classifiers: train, attack, corrupt, explain and score them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """medxai: is the model robust, and do its explanations point at the pathology?"""
    state.quiet = quiet
    set_quiet(quiet)
    state.debug = debug


def run_names(runs: list[Path]) -> list[str]:
    """Display names of run directories: their folder names, made unique with -2, -3 ..."""
    names: list[str] = []
    for r in runs:
        name = r.resolve().name or "run"
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names
