"""``medxai explain``: explain the first n images of a dataset with several methods and models.

Writes into ``--out``:
- ``maps.safetensors``: one (N, 1, H, W) float32 tensor per ``RUN/METHOD``, plus ``images``
  (N, C, H, W) and ``targets/RUN`` (N,); the metadata holds the image ids (JSON).
- ``maps.json``: ids, labels, and per map the run, method, explained output (logit / softmax /
  sigmoid), target class per image and its name, and the method's settings.
- ``grid_000.png``, ...: rows = images, columns = methods with the runs side by side
  (method-major: standard and robust next to each other), colour scale shared per method.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer

from medxai.cli._app import Models, app, first_items, progress
from medxai.errors import ConfigError


def _method_output(method: str, output: str | None) -> str:
    """What ``method`` explains: the given ``output`` or the class's default."""
    from medxai.explain import REGISTRY

    if output is not None:
        return output
    p = inspect.signature(REGISTRY.get(method).__init__).parameters.get("output")
    return str(p.default) if p is not None and p.default is not inspect.Parameter.empty else "logit"


@app.command()
def explain(
    run: list[Path] = typer.Option([], "--run", help="A training run directory (repeat for several models)."),
    model: list[Path] = typer.Option([], "--model", "-m", help="An outside model's card YAML (repeat for several)."),
    data: str = typer.Option(..., "--data", help="Dataset spec for medxai.data.open_dataset (path or YAML)."),
    methods: str = typer.Option("saliency,ig,gradcam,lime", "--methods", help="Comma-separated method names."),
    n: int = typer.Option(16, "--n", min=1, help="Number of images (the first n of the split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    size: int | None = typer.Option(None, "--size", help="Image size (default: the first run's)."),
    target: str = typer.Option("pred", "--target", help="pred (each model's prediction), label, or a class index."),
    output: str | None = typer.Option(None, "--output", help="Explain logit / softmax / sigmoid "
                                      "(default: each method's own; LIME and RISE explain probabilities)."),
    shared_scale: str = typer.Option("per_method", "--scale", help="per_method, global or none."),
    lime_view: str | None = typer.Option(None, "--lime-view", help="Draw LIME as pros_cons, positive or hide_rest."),
    rows_per_png: int = typer.Option(8, "--rows-per-png", min=1, help="Images per PNG grid."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images explained per call."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Explain a dataset sample with several methods and models: maps (safetensors + JSON) and PNG grids."""
    import torch

    from medxai._util.io import atomic_write_json, save_safetensors
    from medxai.explain import REGISTRY, grid
    from medxai.explain import explain as explain_fn
    from medxai.explain.targets import explanation_targets

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty")
    for m in names:
        REGISTRY.get(m)  # unknown names fail before any work, listing the known ones
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = Models.from_options(run, model)
    x, items, class_names = first_items(data, split, n, models.size() if size is None else size, models)
    named = models.load(dev, class_names)
    loaded = [(m, info) for _, m, info in named]
    names_of_runs = [name for name, _, _ in named]
    labels = [torch.as_tensor(it["label"]).tolist() for it in items]
    ids = [str(it.get("id", i)) for i, it in enumerate(items)]
    maps: dict[tuple[str, str], torch.Tensor] = {}
    info: dict = {"ids": ids, "labels": labels, "data": data, "split": split, "runs": {}, "maps": {}}
    tensors: dict[str, torch.Tensor] = {"images": x}
    with progress() as bar:
        task = bar.add_task("explaining", total=len(loaded) * len(names) * len(x))
        for (model, rinfo), rname in zip(loaded, names_of_runs, strict=True):
            t = explanation_targets(model, x.to(dev), target, labels, batch_size=batch_size)
            tensors[f"targets/{rname}"] = t.cpu()
            cls_names = rinfo.class_names
            t_names = [cls_names[int(c)] if int(c) < len(cls_names) else str(int(c)) for c in t]
            info["runs"][rname] = {"dir": str(rinfo.run_dir), "checkpoint": str(rinfo.checkpoint),
                                   "task": rinfo.task, "class_names": cls_names}
            for m in names:
                out_m = _method_output(m, output)
                kw = {} if output is None else {"output": output}
                parts = []
                for i in range(0, len(x), batch_size):
                    xb = x[i:i + batch_size].to(dev)
                    parts.append(explain_fn(model, xb, m, t[i:i + batch_size].to(dev), **kw).float().cpu())
                    bar.advance(task, len(xb))
                maps[(rname, m)] = torch.cat(parts)
                tensors[f"{rname}/{m}"] = maps[(rname, m)]
                info["maps"][f"{rname}/{m}"] = {
                    "run": rname, "method": m, "output": out_m, "target_rule": target,
                    "targets": t.tolist(), "target_names": t_names,
                    "shape": list(maps[(rname, m)].shape)}
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "maps.safetensors", tensors, metadata={"ids": json.dumps(ids), "format": "medxai-maps-1"})
    # columns method-major so that the runs of one method sit side by side
    ordered = {(r, m): maps[(r, m)] for m in names for r in names_of_runs}
    views = {k: lime_view for k in ordered if k[1] == "lime"} if lime_view else None
    pngs = []
    for j, start in enumerate(range(0, len(x), rows_per_png)):
        sl = slice(start, start + rows_per_png)
        path = out / f"grid_{j:03d}.png"
        fig = grid(x[sl], {k: v[sl] for k, v in ordered.items()}, row_labels=ids[sl], shared_scale=shared_scale,
                   views=views, path=path)
        fig.clear()
        pngs.append(path.name)
    info["pngs"] = pngs
    atomic_write_json(out / "maps.json", info)
    typer.echo(f"wrote {len(maps)} maps for {len(x)} images and {len(pngs)} grid(s) to {out}")
