"""The typer application object and the global options (--quiet, --debug)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from medxai._util.progress import progress, set_quiet

__all__ = ["app", "first_items", "parse_metric_options", "progress", "run_names", "state"]


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


def _file_or_text(text: str) -> str:
    """The file's content when ``text`` names an existing file, else ``text`` itself."""
    try:
        is_file = "\n" not in text and Path(text).is_file()
    except OSError:  # a name too long to be a path: it is YAML text
        is_file = False
    return Path(text).read_text(encoding="utf-8") if is_file else text


def parse_metric_options(text: str | None, flag: str = "--options") -> dict[str, dict]:
    """Per-metric keyword arguments from YAML/JSON text or a file, through ``safe_yaml_load``
    (alias bombs refused): ``{metric: {kwarg: value}}``. Called before any other file is read."""
    import yaml

    from medxai._util.io import safe_yaml_load
    from medxai.errors import ConfigError

    if not text:
        return {}
    try:
        opts = safe_yaml_load(_file_or_text(text))
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"{flag} is not valid YAML/JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
        raise ConfigError(f"{flag} must map metric names to keyword arguments, e.g. '{{deletion: {{steps: 50}}}}'")
    return opts


def first_items(data: str, split: str, n: int, size: int | None) -> tuple[Any, list[dict]]:
    """The first ``n`` items of a dataset split: (x (N, C, H, W) float32, the items); empty refused."""
    import torch

    from medxai.data import open_dataset
    from medxai.errors import ConfigError

    ds = open_dataset(data, split=split, **({} if size is None else {"size": size}))
    n = min(n, len(ds))
    if n < 1:
        raise ConfigError(f"dataset {data!r} split {split!r} is empty")
    items = [ds[i] for i in range(n)]
    return torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items]), items
