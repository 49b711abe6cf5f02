"""Progress bars for long library work (training, store shards, the audit's stages).

Library code calls ``progress()``; the CLI's ``--quiet`` calls ``set_quiet(True)`` once, so the
library never imports the CLI to learn whether bars are wanted.
"""

from __future__ import annotations

from typing import Any

_QUIET = {"on": False}


def set_quiet(quiet: bool) -> None:
    """Turn every later ``progress()`` display off (``--quiet``) or back on."""
    _QUIET["on"] = bool(quiet)


def is_quiet() -> bool:
    return _QUIET["on"]


def progress(**kw: Any) -> Any:
    """A rich ``Progress`` (description, bar, done/total, elapsed, remaining), off when quiet."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=is_quiet(),
        transient=False,
        **kw,
    )
