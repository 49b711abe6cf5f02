"""The typer application object and the global options (--quiet, --debug)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from medxai._util.progress import progress, set_quiet

__all__ = ["Models", "app", "card_names", "first_items", "parse_metric_options", "progress", "run_names", "state"]


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, spinners or stage logs "
                               "(results and the paths written still print).",),
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


def card_names(cards: list[Path], taken: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Model names for cards: the card file's stem, made unique with -2, -3 ... (also against ``taken``)."""
    names: list[str] = list(taken)
    for c in cards:
        base = "".join(ch if ch.isalnum() or ch in "_+-." else "_" for ch in c.stem).lstrip(".")[:60] or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names[len(taken):]


@dataclass
class Models:
    """The models of a command: ``--run`` directories, then ``--model`` cards (read, not yet loaded)."""

    runs: list[Path]
    cards: list[Any]  # medxai.cards.ModelCard
    names: list[str]

    @classmethod
    def from_options(cls, runs: list[Path] | None, cards: list[Path] | None) -> Models:
        from medxai.cards import read_card
        from medxai.errors import ConfigError

        runs, card_paths = list(runs or []), list(cards or [])
        if not runs and not card_paths:
            raise ConfigError("give a model: --run RUN_DIR (trained by medxai) or --model CARD.yaml (an outside model)")
        names = run_names(runs)
        return cls(runs, [read_card(c) for c in card_paths], names + card_names(card_paths, names))

    def size(self) -> int | None:
        """The first model's input size (a run's training size, a card's input size)."""
        from medxai.runs import read_model_json

        if self.runs:
            meta_size = read_model_json(self.runs[0]).get("image_size")
            return int(meta_size[0]) if isinstance(meta_size, (list, tuple)) and meta_size else None
        return int(self.cards[0].input.size[0])

    def run_class_order(self, names: list[str], card_order: list[str] | None) -> list[str] | None:
        """The order the data must be read in for the runs' outputs (classes matched by name): the
        runs' class list; None when the data are in it already. Mismatches are refused listing both."""
        from medxai.errors import ModelError
        from medxai.runs import read_model_json

        lists = {n: [str(c) for c in read_model_json(r)["class_names"]] for n, r in zip(self.names, self.runs,
                                                                                       strict=False)}
        first = next(iter(lists.values()))
        for name, classes in lists.items():
            if sorted(classes) != sorted(names):
                raise ModelError(f"run {name!r} was trained on the classes {classes}, the data have {names} "
                                 "(classes are matched by name: rename the folders or declare classes in the spec)")
            if classes != first:
                raise ModelError(f"runs order their classes differently ({first} and {classes}): give them one at "
                                 "a time")
        if card_order is not None and card_order[1:] != first[1:] and len(first) == 2:
            raise ModelError(f"the cards' positive class {card_order[1]!r} is not the runs' {first[1]!r}")
        return None if first == names else first

    def load(self, device: Any, class_names: list[str] | None = None) -> list[tuple[str, Any, Any]]:
        """``[(name, model, RunInfo)]`` on ``device``; cards' outputs put in ``class_names``' order by name."""
        from medxai.cards import load_card
        from medxai.runs import load_run

        loaded = [(n, *load_run(r, device=device)) for n, r in zip(self.names, self.runs, strict=False)]
        card_names_ = self.names[len(self.runs):]
        return loaded + [(n, *load_card(c, device=device, class_order=class_names))
                         for n, c in zip(card_names_, self.cards, strict=True)]


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


def first_items(data: str, split: str, n: int, size: int | None, models: Models | None = None,
                seed: int = 0) -> tuple[Any, list[dict], list[str]]:
    """``n`` items of a dataset split: (x (N, C, H, W) float32, the items, the dataset's class names,
    which the labels index); an empty split is refused. The items are a prefix of the split's
    class-stratified seeded order (``medxai.data.sampling``: the audit draws the same). With
    ``models`` that hold cards, the data's classes must be the cards' (by name) and are read in the
    cards' order (a binary task's positive class second)."""
    import torch

    from medxai.cards import data_class_order
    from medxai.data import open_dataset
    from medxai.errors import ConfigError

    opts: dict[str, Any] = {} if size is None else {"size": size}
    if models is not None and models.cards:
        opts["channels"] = models.cards[0].input.channels
    ds = open_dataset(data, split=split, **opts)
    cards = dict(zip(models.names[len(models.runs):], models.cards, strict=True)) if models else {}
    order = data_class_order(cards, list(ds.class_names), ds.task)
    if models is not None and models.runs:
        order = models.run_class_order(list(ds.class_names), order)
    if order is not None:
        ds = open_dataset(data, split=split, classes=order, **opts)
    if len(ds) < 1:
        raise ConfigError(f"dataset {data!r} split {split!r} is empty")
    from medxai.data.sampling import sample_indices

    items = [ds[i] for i in sample_indices(ds, n, seed)[0]]
    x = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items])
    return x, items, list(ds.class_names)
