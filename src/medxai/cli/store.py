"""``medxai store explain | score | info``: dataset-scale explanations and scores in a resumable
store, under torchrun or in one process (the `store` sub-app of the `medxai` command line).

    torchrun --nproc_per_node=4 --no-python -- medxai store explain --run runs/std --data DATA \\
        --methods saliency,gradcam --store maps/
    torchrun --nproc_per_node=4 --no-python -- medxai store score --store maps/ --metrics pointing_game,energy
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medxai.cli._app import Models, app, parse_metric_options, state
from medxai.errors import ConfigError, DataError

store_app = typer.Typer(help="Explain and score whole datasets into a chunked, resumable store (torchrun-ready).",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")



def _open(data: str, split: str, size: int | None, n: int | None, classes: list[str] | None = None) -> Any:
    from medxai.data import open_dataset

    kw: dict[str, Any] = {"split": split}
    if size is not None:
        kw["size"] = size
    if classes is not None:  # the models' class order, by name (recorded in the store for store score)
        kw["classes"] = classes
    ds = open_dataset(data, **kw)
    if len(ds) == 0:
        raise ConfigError(f"dataset {data!r} split {split!r} is empty")
    return _head(ds, n) if n is not None else ds


def _head(data: Any, n: int) -> Any:
    """``n`` items of a dataset: a prefix of its class-stratified seeded order, as the audit and the
    other commands' ``--n`` draw (``medxai.data.sampling``); ``ids`` kept for the store's fingerprint."""
    from torch.utils.data import Dataset

    from medxai.data.sampling import sample_indices

    index = sample_indices(data, n)[0]

    class Head(Dataset):
        def __init__(self) -> None:
            self.n = len(index)
            ids = getattr(data, "ids", None)
            self.ids = [list(ids)[i] for i in index] if ids is not None else None
            labels = getattr(data, "labels", None)
            self.labels = None if labels is None else labels[index]
            for attr in ("task", "class_names"):
                if hasattr(data, attr):
                    setattr(self, attr, getattr(data, attr))

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Any:
            if not 0 <= i < self.n:
                raise IndexError(i)
            return data[index[i]]

    return Head()


def _echo(msg: str) -> None:
    from medxai.distributed import current

    if current().is_main:  # under -q too: it hides progress bars only
        typer.echo(msg)


def _open_for(models: Models, data: str, split: str, size: int | None, n: int | None) -> tuple[Any, list | None]:
    """The split, read in the models' class order by name (runs' order; cards' positive class second)."""
    from medxai.cards import data_class_order

    ds = _open(data, split, size, n)
    cards = dict(zip(models.names[len(models.runs):], models.cards, strict=True))
    order = data_class_order(cards, list(ds.class_names), ds.task)
    if models.runs:
        order = models.run_class_order(list(ds.class_names), order)
    return (_open(data, split, size, n, order), order) if order is not None else (ds, None)


@store_app.command("explain")
def store_explain(
    run: list[Path] = typer.Option([], "--run", help="A training run directory (repeat for several models)."),
    model: list[Path] = typer.Option([], "--model", "-m", help="An outside model's card YAML (repeat for several)."),
    data: str = typer.Option(..., "--data", help="Dataset spec for medxai.data.open_dataset (path or YAML)."),
    store: Path = typer.Option(..., "--store", "--out", "-o", help="Store folder (created; a rerun completes it)."),
    methods: str = typer.Option("saliency,gradcam", "--methods", help="Comma-separated method names."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    n: int | None = typer.Option(None, "--n", min=1, help="Only the first n images (default: all)."),
    size: int | None = typer.Option(None, "--size", help="Image size (default: the first run's)."),
    target: str = typer.Option("pred", "--target", help="pred (each model's prediction), label, or a class index."),
    output: str | None = typer.Option(None, "--output", help="Explain logit / softmax / sigmoid (default: each "
                                      "method's own)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images explained per call."),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Images per shard file (the unit of resume)."),
    max_shard_voxels: int | None = typer.Option(None, "--max-shard-voxels", min=1, help="At most this many map "
                                                "voxels per shard (models x methods x D*H*W per image; volumes); "
                                                "also bounds the batch."),
    dtype: str = typer.Option("float16", "--dtype", help="Stored maps: float16, bfloat16 or float32."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda... (default: this rank's GPU if any)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store of another configuration."),
) -> None:
    """Explain every image of a dataset split with several models and methods into a sharded store."""
    from medxai.distributed import explain_dataset, setup
    from medxai.explain import REGISTRY
    info = setup()
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty")
    for m in names:
        REGISTRY.get(m)
    import torch

    dev = torch.device(device) if device else (torch.device("cuda", info.local_rank) if torch.cuda.is_available()
                                               else torch.device("cpu"))
    models = Models.from_options(run, model)
    size = models.size() if size is None else size
    ds, classes = _open_for(models, data, split, size, n)
    loaded = models.load(dev, list(ds.class_names))
    kw = {} if output is None else {"output": output}
    res = explain_dataset({nm: m for nm, m, _ in loaded}, ds, {m: dict(kw) for m in names}, store, target=target,
                          batch_size=batch_size, shard_size=shard_size, dtype=dtype, device=dev, overwrite=overwrite,
                          progress=not state.quiet, max_shard_voxels=max_shard_voxels,
                          config={"data": data, "split": split, "size": size, "n": n, "classes": classes,
                                  "run_dirs": {nm: str(ri.run_dir) for nm, _, ri in loaded},
                                  "class_names": {nm: ri.class_names for nm, _, ri in loaded}})
    _echo(f"store {store}: {len(ds)} images in {res.n_shards} shard(s); computed {len(res.computed)}, "
          f"already there {len(res.skipped)} ({res.world_size} process(es), {res.seconds:.1f}s)")


@store_app.command("score")
def store_score(
    store: Path = typer.Option(..., "--store", help="Store folder written by `medxai store explain`."),
    metrics: str | None = typer.Option(None, "--metrics", help="Comma-separated metric names or aliases "
                                       "(default: medxai.metrics.DEFAULT_METRICS, as `medxai score`)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Score folder (default: STORE/scores)."),
    options: str | None = typer.Option(None, "--options", help="YAML/JSON (or a file) of per-metric keyword "
                                       "arguments, e.g. '{deletion: {steps: 50}}'."),
    data: str | None = typer.Option(None, "--data", help="Dataset spec for metrics that need the images "
                                    "(default: the store's)."),
    run: list[Path] | None = typer.Option(None, "--run", help="Run folders for model-based metrics, matched by "
                                          "folder name (default: the store's)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of per-image noise (ROAD)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per metric call."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda... (default: this rank's GPU if any)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace scores of another configuration."),
) -> None:
    """Score a store's maps shard by shard: scores.csv and summary.json (resumable, torchrun-ready)."""
    import torch

    from medxai.distributed import MapStore, score_store, setup
    from medxai.metrics import DEFAULT_METRICS, metric_infos

    opts = parse_metric_options(options)  # before any file is read
    info = setup()
    ms = MapStore.open(store)
    extra = ms.config.get("info", {})
    infos = metric_infos(DEFAULT_METRICS if metrics is None else metrics)
    dev = torch.device(device) if device else (torch.device("cuda", info.local_rank) if torch.cuda.is_available()
                                               else torch.device("cpu"))
    dataset = models = None
    if any(need in mi.needs for mi in infos for need in ("images", "model", "explainer")):
        spec = data or extra.get("data")
        if spec:
            dataset = _open(spec, extra.get("split", "test"), extra.get("size"), extra.get("n"), extra.get("classes"))
        from medxai.metrics.maps_folder import load_model

        dirs = {Path(r).resolve().name: Path(r) for r in (run or [])}
        recorded = dict(extra.get("run_dirs") or {})
        classes = dict(extra.get("class_names") or {})
        models = {}
        for name, d in recorded.items():
            path = dirs.get(name, Path(d))
            if path.exists():  # a run directory, or an outside model's card (.yaml)
                models[name] = load_model(path, dev, classes.get(name))
        if not models:
            raise DataError(store, f"metrics that need the model need the runs {sorted(recorded) or '(none named)'}, "
                            "and none of their folders exists; pass --run RUN (matched by folder name)")
    res = score_store(store, [i.name for i in infos], out=out, dataset=dataset, models=models,
                      options=opts, n_boot=n_boot, seed=seed, batch_size=batch_size, device=dev,
                      overwrite=overwrite, progress=not state.quiet)
    r = res["run"]
    _echo(f"scores of {store}: {res['n_images']} images, {len(res['summary'])} summary rows in {r.root}; "
          f"computed {len(r.computed)} shard(s), already there {len(r.skipped)}")
    for key, why in res["skipped"].items():
        _echo(f"skipped for {key}: " + "; ".join(f"{k} ({v})" for k, v in why.items()))
    for key, per in res.get("skipped_samples", {}).items():
        _echo(f"images without a mask for {key}: " + "; ".join(f"{k} ({len(v)})" for k, v in per.items()))


@store_app.command("info")
def store_info(store: Path = typer.Argument(..., help="Store folder.")) -> None:
    """How far a store is: images, shards done and missing, maps, and its score folders."""
    from medxai.distributed import MapStore, ScoreStore

    ms = MapStore.open(store)
    done = ms.done()
    typer.echo(f"{store}: {ms.n} images, {len(done)}/{ms.n_shards} shard(s) done, dtype {ms.config.get('dtype')}, "
               f"maps {', '.join(ms.keys)}")
    for idx in sorted(Path(store).glob("*/index.json")):
        try:
            ss = ScoreStore.open(idx.parent)
        except DataError:
            continue
        typer.echo(f"  scores {idx.parent.name}: {len(ss.done())}/{ss.n_shards} shard(s), metrics "
                   f"{', '.join(ss.config.get('metrics', []))}")
