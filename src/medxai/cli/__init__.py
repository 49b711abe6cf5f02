"""The ``medxai`` command line: one typer app; each stage adds its commands from its own module."""

from __future__ import annotations

import sys

from medxai.cli._app import app, state

__all__ = ["app", "main", "state"]


def _load_commands() -> None:
    """Import every command module: each registers its commands on ``app`` at import time."""
    from medxai.cli import attack, audit, data, explain, pretrain, score, store, train  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; deliberate errors become one line and exit code 2."""
    from medxai.errors import MedxaiError

    _load_commands()
    try:
        app(args=argv, standalone_mode=False)
    except MedxaiError as exc:
        if state.debug:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as exc:
        # Usage errors and exits of typer (its own click in typer >= 0.16, click before): found by
        # what they do, not by import, so either generation works.
        name = type(exc).__name__
        if name == "Abort":
            sys.exit(130)
        if name == "Exit" and hasattr(exc, "exit_code"):
            sys.exit(exc.exit_code)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(2)
        raise
