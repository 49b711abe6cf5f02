"""Explain a whole dataset into a ``MapStore``, shard by shard, sharded over torchrun's ranks.

Every shard (``shard_size`` consecutive samples) is explained in batches of ``batch_size`` by
``medxai.explain.explain`` for every model and method and written as one safetensors file. The
work of a shard does not depend on which rank does it, so 1 and N processes write the same
maps. A rerun of the same configuration skips the shards already on disk.

Images (C, H, W) or volumes (C, D, H, W). ``max_shard_voxels`` bounds a shard (and an explain batch)
by the map voxels it holds: shard size ``min(shard_size, max(1, budget // (T * D * H * W)))`` with T the
maps per sample (models x methods) and (D, H, W) (or (H, W)) the first item's spatial shape.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from medxai._util.dist import DistInfo, barrier, broadcast_object, gather_objects, setup
from medxai._util.validate import check_images
from medxai.data.datasets import stack_masks
from medxai.distributed.store import MapStore, fingerprint
from medxai.errors import ConfigError, DataError, MedxaiError
from medxai.explain.targets import check_target_rule, explanation_targets

__all__ = ["DTYPES", "StoreRun", "explain_dataset", "model_digest"]

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class StoreRun:
    """What a call did: ``computed`` shards (by any rank, this call), ``skipped`` (already there)."""

    root: Path
    n_shards: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _dataset_digest(dataset: Dataset) -> Any:
    ids = getattr(dataset, "ids", None)
    if isinstance(ids, (list, tuple)) and len(ids) == len(dataset):  # type: ignore[arg-type]
        return hashlib.sha256("\x1f".join(map(str, ids)).encode()).hexdigest()
    return [type(dataset).__name__, len(dataset)]  # type: ignore[arg-type]


def _methods(methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | str) -> dict[str, dict[str, Any]]:
    from medxai.explain import REGISTRY

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out = ({str(m): {} for m in methods} if not isinstance(methods, Mapping)
           else {str(k): dict(v or {}) for k, v in methods.items()})
    if not out:
        raise ConfigError("methods is empty")
    for m in out:
        if "/" in m:
            raise ConfigError(f"method name {m!r} must not contain '/'")
        REGISTRY.get(m)  # unknown names fail here, listing the known ones
    return out


def _models(models: nn.Module | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    out = {"model": models} if isinstance(models, nn.Module) else dict(models)
    if not out:
        raise ConfigError("models is empty")
    for name, m in out.items():
        if not isinstance(m, nn.Module):
            raise ConfigError(f"models[{name!r}] is a {type(m).__name__}, not a torch.nn.Module")
        if not name or "/" in name:
            raise ConfigError(f"model name {name!r} must be non-empty and must not contain '/'")
    return out


def _default_device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def _items(dataset: Dataset, start: int, stop: int) -> list[dict[str, Any]]:
    out = []
    for j in range(start, stop):
        it = dataset[j]
        if not isinstance(it, Mapping) or "image" not in it:
            raise DataError(None, f"dataset item {j} is not a dict with an 'image' (got {type(it).__name__})")
        out.append(it)
    return out


def _stack_masks(vals: list[Any], spatial: tuple[int, ...], key: str) -> torch.Tensor:
    """Masks of several items -> bool (N, K, *spatial): 2-D through ``stack_masks``; volumes: a missing
    mask is all False, a (D, H, W) or (1, D, H, W) mask is broadcast to the largest K."""
    if len(spatial) == 2:
        return stack_masks(vals, spatial, key)  # type: ignore[arg-type]
    ts = []
    for v in vals:
        t = torch.zeros(spatial, dtype=torch.bool) if v is None else torch.as_tensor(v).bool()
        t = t[None] if t.ndim == len(spatial) else t
        if t.ndim != len(spatial) + 1 or tuple(t.shape[1:]) != spatial:
            raise DataError(None, f"{key} of shape {tuple(t.shape)} does not match the volumes {spatial}")
        ts.append(t)
    k = max(t.shape[0] for t in ts)
    return torch.stack([t.expand(k, *spatial) if t.shape[0] == 1 else t for t in ts])


def shard_geometry(dataset: Dataset, n_maps: int, shard_size: int, batch_size: int,
                   max_shard_voxels: int | None) -> tuple[int, int, tuple[int, ...]]:
    """(shard size, batch size, spatial shape of the first item): without a budget the given sizes;
    with one, shard size ``min(shard_size, max(1, max_shard_voxels // (n_maps * prod(spatial))))`` and the
    batch no larger than the shard."""
    first = _items(dataset, 0, 1)[0]
    spatial = tuple(int(v) for v in torch.as_tensor(first["image"]).shape[1:])
    if max_shard_voxels is None:
        return shard_size, batch_size, spatial
    per = max(1, n_maps * math.prod(spatial))
    size = min(shard_size, max(1, int(max_shard_voxels) // per))
    return size, min(batch_size, size), spatial


def explain_shard(models: Mapping[str, nn.Module], dataset: Dataset, methods: Mapping[str, Mapping[str, Any]],
                  start: int, stop: int, *, target: str | int, batch_size: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of one shard: samples ``start..stop`` explained in batches."""
    from medxai.explain import explain

    parts: dict[str, list[torch.Tensor]] = {}
    ids: list[str] = []
    labels, masks, shortcuts = [], [], []
    has_mask = has_shortcut = False
    for b0 in range(start, stop, batch_size):
        items = _items(dataset, b0, min(stop, b0 + batch_size))
        x = torch.stack([torch.as_tensor(it["image"], dtype=torch.float32) for it in items])
        check_images(x, f"images {b0}..{b0 + len(items) - 1}", ndim=(4, 5))
        size = tuple(x.shape[2:])
        ids.extend(str(it.get("id", b0 + k)) for k, it in enumerate(items))
        lab = [it.get("label") for it in items]
        if all(v is not None for v in lab):
            labels.append(torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in lab]))
        has_mask |= any(it.get("mask") is not None for it in items)
        has_shortcut |= any(it.get("shortcut_mask") is not None for it in items)
        masks.append([it.get("mask") for it in items])
        shortcuts.append([it.get("shortcut_mask") for it in items])
        xd = x.to(device)
        for rname, model in models.items():
            t = explanation_targets(model, xd, target, lab, batch_size=max(1, len(xd))).cpu()
            parts.setdefault(f"targets/{rname}", []).append(t)
            for m, kw in methods.items():
                out = explain(model, xd, m, t.to(device), **kw)
                out = out[0] if isinstance(out, tuple) else out
                if out.shape != (len(xd), 1, *size):
                    raise ConfigError(f"method {m!r} returned maps of shape {tuple(out.shape)}, not (B, 1, "
                                      f"{', '.join(map(str, size))}); a (B, T) target or top_k is not supported in a "
                                      "store")
                parts.setdefault(f"maps/{rname}/{m}", []).append(out.detach().float().cpu().to(dtype))
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    tensors["index"] = torch.arange(start, stop, dtype=torch.int64)
    if labels and sum(len(v) for v in labels) == stop - start:
        tensors["labels"] = torch.cat(labels)
    if has_mask:
        tensors["masks"] = torch.cat([_stack_masks(v, size, "mask").to(torch.uint8) for v in masks])
    if has_shortcut:
        tensors["shortcut_masks"] = torch.cat([_stack_masks(v, size, "shortcut_mask")[:, 0].to(torch.uint8)
                                               for v in shortcuts])
    return tensors, {"ids": ids}


def run_shards(store: Any, missing: list[int], info: DistInfo, label: str,
               compute: Callable[[int], tuple[dict, dict]], *, on_shard: Callable[[int], None] | None = None,
               progress: bool = False) -> list[int]:
    """This rank's share of the missing shards (every world-th), each computed and written atomically
    as it finishes, with a progress bar on rank 0; returns the shards every rank computed."""
    mine = missing[info.rank::info.world_size]
    bars = None
    if progress and info.is_main:
        from medxai._util.progress import progress as make_progress

        bars = make_progress()
        bars.start()
        task = bars.add_task(f"{label} (rank 0 of {info.world_size})", total=len(mine))
    try:
        for i in mine:
            tensors, meta = compute(i)
            store.write(i, tensors, meta)
            if on_shard is not None:
                on_shard(i)
            if bars is not None:
                bars.advance(task)
    finally:
        if bars is not None:
            bars.stop()
    return sorted(i for part in gather_objects(mine) for i in part)


def _plan(store: MapStore, overwrite: bool, info: DistInfo) -> list[int]:
    """Rank 0 prepares the store; every rank gets the same list of missing shards (or the error)."""
    result: Any
    if info.is_main:
        try:
            result = ("ok", store.prepare(overwrite=overwrite))
        except MedxaiError as exc:
            result = ("error", type(exc).__name__, str(exc))
    else:
        result = None
    result = broadcast_object(result)
    if result[0] == "error":
        raise ConfigError(result[2]) if result[1] == "ConfigError" else DataError(None, result[2])
    return list(result[1])


def explain_dataset(models: nn.Module | Mapping[str, nn.Module], dataset: Dataset,
                    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | str, store: str | Path, *,
                    target: str | int = "pred", batch_size: int = 32, shard_size: int = 256,
                    dtype: str = "float16", device: str | torch.device | None = None, overwrite: bool = False,
                    config: Mapping[str, Any] | None = None, progress: bool = False,
                    on_shard: Callable[[int], None] | None = None, max_shard_voxels: int | None = None) -> StoreRun:
    """Explain every sample of ``dataset`` with every model and method into the store ``store``.

    ``models``: a module or {name: module} (put in eval mode, moved to ``device``). ``methods``:
    names of ``medxai.explain.REGISTRY`` or {name: keyword arguments for ``explain``}.
    ``target``: "pred" (each model's prediction), "label" or a class index. ``dtype``: maps are
    stored as float16 (default), bfloat16 or float32. ``config``: JSON-able facts recorded in the
    index and fingerprint (the CLI records the data spec and run folders). Under torchrun each
    rank explains every world-th missing shard; shards already written by the same configuration
    are skipped. ``on_shard(i)`` is called after shard ``i`` is written. ``max_shard_voxels``: at most
    this many map voxels per shard (``shard_geometry``; recorded in the index with the shard size it gave).
    Returns a ``StoreRun``.
    """
    t0 = time.perf_counter()
    info = setup()
    runs = _models(models)
    meths = _methods(methods)
    rule = check_target_rule(target)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 1:
        raise DataError(None, "the dataset is empty")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    if max_shard_voxels is not None and (isinstance(max_shard_voxels, bool) or not isinstance(max_shard_voxels, int)
                                         or max_shard_voxels < 1):
        raise ConfigError(f"max_shard_voxels must be a positive integer or None, got {max_shard_voxels!r}")
    dev = torch.device(device) if device is not None else _default_device(info)
    for m in runs.values():
        m.to(dev).eval()
    cfg = {"runs": {k: model_digest(m) for k, m in runs.items()}, "methods": meths, "target": rule, "dtype": dtype,
           "batch_size": batch_size, "dataset": _dataset_digest(dataset), "info": dict(config or {})}
    if max_shard_voxels is not None:
        shard_size, batch_size, spatial = shard_geometry(dataset, len(runs) * len(meths), shard_size, batch_size,
                                                         max_shard_voxels)
        cfg.update(max_shard_voxels=max_shard_voxels, spatial=list(spatial), explain_batch_size=batch_size)
    fp = fingerprint({"kind": "maps", "n": n, "shard_size": shard_size, **cfg})
    ms = MapStore(store, n=n, shard_size=shard_size, fingerprint=fp, config=cfg)
    missing = _plan(ms, overwrite, info)
    computed = run_shards(ms, missing, info, "explaining", lambda i: explain_shard(
        runs, dataset, meths, *ms.shard_range(i), target=rule, batch_size=batch_size, dtype=DTYPES[dtype],
        device=dev), on_shard=on_shard, progress=progress)
    barrier()
    if info.is_main:
        ms.mark()
    barrier()
    return StoreRun(root=ms.root, n_shards=ms.n_shards, computed=computed,
                    skipped=sorted(set(range(ms.n_shards)) - set(missing)), seconds=time.perf_counter() - t0,
                    world_size=info.world_size)
