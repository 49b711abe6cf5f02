"""``medxai pretrain``: MAE / DINO / supervised pretraining of a ViT backbone for ``init_vit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import app, state
from medxai.errors import ConfigError

_TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "warmup_epochs", "seed", "device")


def _parse_sets(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set key=value`` (values read as YAML) -> (pretrain() keywords, objective options,
    ``model.``-prefixed model keywords for ``medxai.models.create``)."""
    import yaml

    from medxai._util.io import safe_yaml_load

    train, options, model = {}, {}, {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set: expected KEY=VALUE, got {pair!r}")
        key, text = (s.strip() for s in pair.split("=", 1))
        try:
            value = safe_yaml_load(text) if text else None
        except yaml.YAMLError:
            value = text
        if key.startswith("model."):
            model[key[len("model."):]] = value
        elif key in _TRAIN_KEYS:
            train[key] = value
        else:
            options[key] = value
    return train, options, model


@app.command("pretrain")
def pretrain_command(
    objective: str = typer.Option("mae", "--objective", help="mae, dino or supervised."),
    data: str = typer.Option(..., "--data", help="Dataset spec or a plain folder of images (labels: supervised)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where pretrained.safetensors and pretrain.json go."),
    arch: str = typer.Option("vit-ti8", "--arch", help="A medxai ViT (vit-ti4, vit-ti8, vit-s16 ...)."),
    epochs: int = typer.Option(100, "--epochs", help="Pretraining epochs."),
    size: int = typer.Option(None, "--size", help="Image size (default: the architecture's img_size)."),
    split: str = typer.Option(None, "--split", help="Dataset split (default: all images)."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE: batch_size, lr, weight_decay, warmup_epochs, "
                                        "seed, device, an objective option (mask_ratio=0.6, out_dim=256 ...) "
                                        "or model.KEY for the ViT (model.depth=4). Repeatable."),
) -> None:
    """Pretrain a ViT backbone (MAE, DINO or supervised) and write it for ``init: mae|dino|supervised``."""
    from medxai.models import create
    from medxai.train.pretrain import OBJECTIVES, open_pretrain_data, pretrain

    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not arch.startswith("vit-"):
        raise ConfigError(f"--arch must be a medxai ViT (vit-ti4, vit-ti8, vit-s16, ...), got {arch!r}")
    train, options, model_kw = _parse_sets(overrides)
    if size is not None:
        model_kw.setdefault("img_size", size)
    probe = create(arch, 0, 1, **model_kw)
    img = int(probe.patch_embed.img_size[0])
    ds = open_pretrain_data(data, split, size=img, need_labels=objective == "supervised")
    first = ds[0]
    in_chans = int((first["image"] if isinstance(first, dict) else first[0]).shape[0])
    n_out = len(getattr(ds, "class_names", None) or []) or 2
    model = create(arch, n_out, in_chans, **model_kw)
    result = pretrain(model, ds, objective, epochs=epochs, out=out, progress=not state.quiet, **train, **options)
    from rich.console import Console

    console = Console(highlight=False)
    console.print(f"pretrained {arch} ({objective}) on {len(ds)} images, {epochs} epoch(s): loss "
                  f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}; wrote {result.weights} and {result.record}")
    if objective == "dino":
        import math

        last, k = result.history[-1], result.settings["options"]["out_dim"]
        console.print(f"last epoch: teacher entropy {last['teacher_entropy']:.3f} nats (log K = {math.log(k):.3f}), "
                      f"KL(mean teacher || uniform) {last['teacher_kl_uniform']:.3f}, "
                      f"teacher MI {last['teacher_mi']:.3f} (collapse: MI ~ 0; see docs/pretrain.md)")
