"""``medxai data synth`` (write a synthetic study in the real layouts) and ``medxai data info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import app, progress
from medxai.errors import ConfigError

data_app = typer.Typer(help="Synthetic studies and dataset layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEFAULT_SPLITS = "train=0.7,val=0.15,test=0.15"


def parse_splits(text: str, n: int) -> dict[str, int]:
    """``"train=0.7,val=0.15,test=0.15"`` (fractions of ``n`` summing to 1) -> images per split.

    val and test get ``round(n * fraction)``; train gets the rest. Splits with 0 images are dropped.
    """
    fractions: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ConfigError(f"--splits: expected NAME=FRACTION, got {part!r}")
        name, value = (x.strip() for x in part.split("=", 1))
        if name not in ("train", "val", "test"):
            raise ConfigError(f"--splits: unknown split {name!r} (use train, val, test)")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"--splits: {name}={value!r} is not a number") from None
        if not 0.0 <= f <= 1.0:
            raise ConfigError(f"--splits: {name}={f} must be a fraction in [0, 1]")
        fractions[name] = f
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"--splits: fractions must sum to 1, got {fractions}")
    counts = {s: round(n * f) for s, f in fractions.items() if s != "train"}
    if "train" in fractions:
        counts["train"] = n - sum(counts.values())
    elif sum(counts.values()) != n:  # no train: give the rounding rest to the largest split
        biggest = max(counts, key=lambda s: fractions[s])
        counts[biggest] += n - sum(counts.values())
    if any(c < 0 for c in counts.values()):
        raise ConfigError(f"--splits: cannot split {n} images as {fractions}")
    return {s: counts[s] for s in ("train", "val", "test") if counts.get(s, 0) > 0}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, values read as YAML scalars / lists (``balanced=true``, ``shares=[.5,.5]``)."""
    import yaml

    from medxai._util.io import safe_yaml_load

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--option: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = safe_yaml_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--option {key}: cannot parse value {value!r}") from None
    return out


@data_app.command("synth")
def synth(
    study: str = typer.Argument(..., help="Synthetic study: cxr-pneumonia, cxr-multilabel, fundus-dr, skin-lesion, "
                                          "ct-nodule (volumes)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    n: int = typer.Option(1000, "--n", help="Images in all splits together."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed (same seed, same bytes)."),
    shortcut: float | None = typer.Option(None, "--shortcut", help="Probability of the 'R' marker shortcut."),
    splits: str = typer.Option(DEFAULT_SPLITS, "--splits", help="Fractions of N per split."),
    option: list[str] = typer.Option([], "--option", help="Study option KEY=VALUE (repeatable), e.g. balanced=true."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace splits already written."),
    fmt: str | None = typer.Option(None, "--format", help="Volume studies: nifti (default) or dicom (a series "
                                                          "folder per volume)."),
) -> None:
    """Write a synthetic study in the real datasets' layouts, with lesion masks beside."""
    from rich.console import Console

    from medxai.data.synthetic import VOLUME_STUDIES
    from medxai.data.write import write_synthetic

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    counts = parse_splits(splits, n)
    opts = parse_options(option)
    if study in VOLUME_STUDIES:
        _synth_volumes(study, out, counts, size=size, seed=seed, shortcut=shortcut, fmt=fmt or "nifti",
                       overwrite=overwrite, options=opts)
        return
    if fmt is not None:
        raise ConfigError(f"--format applies to volume studies ({', '.join(VOLUME_STUDIES)}), not {study}")
    with progress() as bar:
        def make(split: str, total: int):
            task = bar.add_task(f"{study} {split}", total=total)
            return lambda k: bar.advance(task, k)

        manifest = write_synthetic(study, out, counts, size=size, seed=seed, shortcut=shortcut,
                                   overwrite=overwrite, progress=make, **opts)
    meta = json.loads(manifest.read_text())  # printed under -q too: it hides progress bars only
    Console().print(f"wrote {sum(counts.values())} images of {study} ({meta['layout']} layout, splits "
                    f"{meta['splits']}) to {out}", highlight=False)


def _synth_volumes(study: str, out: Path, counts: dict[str, int], *, size: int, seed: int, shortcut: float | None,
                   fmt: str, overwrite: bool, options: dict[str, Any]) -> None:
    """``medxai data synth ct-nodule``: NIfTI files (or DICOM series) + volumes.csv + masks + medxai.json."""
    from rich.console import Console

    from medxai.data.volumes import write_synthetic_volumes

    with progress() as bar:
        def make(split: str, total: int):
            task = bar.add_task(f"{study} {split}", total=total)
            return lambda k: bar.advance(task, k)

        manifest = write_synthetic_volumes(study, out, counts, size=size, seed=seed, shortcut=shortcut, fmt=fmt,
                                           overwrite=overwrite, progress=make, **options)
    meta = json.loads(manifest.read_text())
    Console().print(f"wrote {sum(counts.values())} volumes of {study} (volumes layout, {fmt}, splits "
                    f"{meta['splits']}) to {out}", highlight=False)


@data_app.command("info")
def info(
    path: Path = typer.Argument(..., help="Dataset folder, CSV, .npz, YAML spec or medxai.json."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    decode: bool = typer.Option(False, "--decode", help="Decode every image (slower) to find corrupt files."),
    sample: int | None = typer.Option(None, "--sample", help="Scan headers and masks of this many items only."),
) -> None:
    """Counts per class and split, image sizes, mask coverage and problems found."""
    from rich.console import Console
    from rich.table import Table

    from medxai.data.info import dataset_info

    res = dataset_info(path, decode=decode, sample=sample)
    console = Console()
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    console.print(f"[bold]{res['root']}[/]  layout={res['layout']}  task={res['task']}  n={res['n']}")
    if res.get("split_source"):
        console.print(f"splits from: {res['split_source']}", highlight=False)
    for note in res.get("notes", []):
        console.print(f"note: {note}", highlight=False)
    t = Table(title="images per class and split")
    t.add_column("class")
    splits = list(res["splits"])
    for s in splits:
        t.add_column(f"{s} ({res['splits'][s]['n']})", justify="right")
    for name in res["class_names"]:
        cells = []
        for s in splits:
            v = res["splits"][s]["classes"][name]
            cells.append(v if isinstance(v, int) else f"+{v['positive']} -{v['negative']} ?{v['uncertain']} "
                                                      f"_{v['blank']}")
        t.add_row(name, *map(str, cells))
    console.print(t)
    if res["image_sizes"]:
        sizes = ", ".join(f"{k}: {v}" for k, v in list(res["image_sizes"].items())[:8])
        console.print(f"image sizes (W x H: count): {sizes}", highlight=False)
    if res["masks"]:
        m = Table(title="mask coverage")
        keys = sorted({k for v in res["masks"].values() for k in v})
        m.add_column("split")
        for k in keys:
            m.add_column(k, justify="right")
        for s, v in res["masks"].items():
            m.add_row(s, *(f"{v[k]:.3f}" if k in v else "-" for k in keys))
        console.print(m)
    if res["problems"]:
        p = Table(title=f"problems ({len(res['problems'])})")
        p.add_column("path")
        p.add_column("reason")
        for row in res["problems"][:50]:
            p.add_row(row["path"], row["reason"])
        console.print(p)
        if not res.get("decoded", True):
            console.print("images not decoded: decoding problems not checked (run with --decode)")
    elif not res.get("decoded", True):
        console.print("problems: not checked (run with --decode); none in the index and headers")
    else:
        console.print("problems: none found")
