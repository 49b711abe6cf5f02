"""The audit's data stage: build train/val/test datasets and a fixed evaluation sample in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medxai.errors import ConfigError
from medxai.pipeline.config import DataConfig


@dataclass
class EvalSample:
    """The first ``n`` test items as tensors: what attacks, corruptions, explanations score on.

    Images (N, C, H, W), or volumes (N, C, D, H, W) with masks (N, 1|K, D, H, W)."""

    x: torch.Tensor  # (N, C, H, W) float in [0, 1], or (N, C, D, H, W) for volumes
    y: torch.Tensor  # (N,) long, or (N, K) float with NaN for multilabel
    ids: list[str]
    masks: torch.Tensor | None = None  # (N, 1|K, H, W) bool ((N, 1|K, D, H, W) for volumes)
    has_mask: torch.Tensor | None = None  # (N,) bool
    shortcut_masks: torch.Tensor | None = None  # (N, 1, H, W) bool ((N, 1, D, H, W) for volumes)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def volumes(self) -> bool:
        """Whether the sample holds volumes (N, C, D, H, W)."""
        return self.x.ndim == 5

    def subset(self, n: int) -> EvalSample:
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:n]

        extra = {k: (v[:n] if k == "index" else v) for k, v in self.extra.items()}
        return EvalSample(self.x[:n], self.y[:n], self.ids[:n], cut(self.masks), cut(self.has_mask),
                          cut(self.shortcut_masks), extra)


def build_datasets(cfg: DataConfig, *, synthetic: bool | None = None,
                   splits: tuple[str, ...] = ("train", "val", "test"), size: int | None = None,
                   **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ({split: dataset} for ``splits``, description dict).

    ``size`` (default ``cfg.size``) and ``options`` (``channels``, ``classes``: the order labels
    are read in, by name) go to ``open_dataset`` for real data. A split without images is refused
    naming the splits the layout has.
    """
    if cfg.use_synthetic(synthetic):
        ds, desc = _synthetic(cfg, splits)
    else:
        ds, desc = _real(cfg, splits, cfg.size if size is None else size, options)
    first = ds[splits[0]]
    desc.update(task=first.task, class_names=list(first.class_names), split=cfg.split)
    desc["splits"] = {split: describe_counts(d) for split, d in ds.items()}
    return ds, desc


def _synthetic(cfg: DataConfig, splits: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    from medxai.data import SyntheticDataset

    s = cfg.synthetic
    if s is None:
        raise ConfigError("data.synthetic is required to run on the synthetic stand-in")
    sizes = {"train": s.n_train, "val": s.n_val, "test": s.n_test}
    from medxai.pipeline.volumes import is_volume_study

    if is_volume_study(s.study):
        return _synthetic_volumes(s, splits, sizes)
    ds = {split: SyntheticDataset(s.study, sizes[split], size=s.size, seed=s.seed, split=split, shortcut=s.shortcut,
                                  **s.options) for split in splits}
    desc = {"source": "synthetic", "study": s.study, "size": s.size, "seed": s.seed, "shortcut": s.shortcut,
            "description": f"Synthetic {s.study} study at {s.size} px (seed {s.seed})"
            + (f", laterality-marker shortcut at p = {s.shortcut} in train" if s.shortcut else "")}
    return ds, desc


def _synthetic_volumes(s: Any, splits: tuple[str, ...],
                       sizes: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A synthetic volume study's splits (``SyntheticVolumeDataset``: (C, D, H, W) items with 3-D masks)."""
    from medxai.data.volumes import SyntheticVolumeDataset

    ds = {split: SyntheticVolumeDataset(s.study, sizes[split], size=s.size, seed=s.seed, split=split,
                                        shortcut=s.shortcut, **s.options) for split in splits}
    depth = s.options.get("depth") or s.size
    desc = {"source": "synthetic", "study": s.study, "size": s.size, "seed": s.seed, "shortcut": s.shortcut,
            "volumes": True, "volume_shape": [int(depth), s.size, s.size],
            "description": f"Synthetic {s.study} CT study, volumes of {depth} x {s.size} x {s.size} voxels "
                           f"(D x H x W, seed {s.seed})"
            + (f", burned-in marker shortcut at p = {s.shortcut} in train" if s.shortcut else "")}
    return ds, desc


def _real(cfg: DataConfig, splits: tuple[str, ...], size: int | None,
          options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from medxai.data import open_dataset
    from medxai.data.transforms import CLAHE, Compose, Graham, ResizeCrop

    if cfg.spec is None:
        raise ConfigError("data.spec is required to run on real data (or pass --synthetic)")
    tf = None
    if cfg.preprocess == "graham":  # scale to the fundus radius, then to the model's size
        tf = Compose([Graham(), ResizeCrop(size)]) if size else Graham()
    elif cfg.preprocess == "clahe":
        tf = CLAHE()
    resize = None if cfg.preprocess == "graham" else size
    ds = {split: open_dataset(cfg.spec, split=split, size=resize, transform=tf, **options) for split in splits}
    if getattr(ds[splits[0]], "layout", None) == "volumes" and cfg.preprocess != "none":
        raise ConfigError(f"data.preprocess {cfg.preprocess!r} is for 2-D images; the data are volumes")
    empty = [split for split, d in ds.items() if len(d) == 0]
    if empty:
        present = sorted({str(s) for s in getattr(open_dataset(cfg.spec, split=None, **options), "splits", [])})
        raise ConfigError(f"data {cfg.spec!r}: split {empty[0]!r} has no images"
                          + (f" (the layout has the splits {present})" if present else ""))
    from medxai.data.layouts import load_spec

    parsed, root, _ = load_spec(cfg.spec)  # a readable description, not the raw spec
    table = parsed.csv or parsed.npz
    classes = ", ".join(str(c) for c in getattr(ds[splits[0]], "class_names", []) or [])
    layout = {"csv": "CSV", "chexpert": "CheXpert", "medmnist": "MedMNIST"}.get(parsed.layout, parsed.layout.title())
    desc = (f"{layout} layout at {root}"
            + (f" ({table})" if table else "") + (f", classes {classes}" if classes else ""))
    sources = {split: d.split_source for split, d in ds.items() if getattr(d, "split_source", None)}
    if sources:  # e.g. CheXpert-small has no test.csv: say where each split came from
        desc += "; " + ", ".join(f"{split} split from {src}" for split, src in sources.items())
    vol = getattr(ds[splits[0]], "layout", None) == "volumes"
    return ds, {"source": "real", "spec": cfg.spec, "description": desc, **({"volumes": True} if vol else {})}


def describe_counts(d: Any) -> dict[str, Any]:
    labels = np.asarray(d.labels)
    names = list(d.class_names)
    if labels.ndim == 2:  # multilabel: positives per finding
        counts = {n: int(np.nansum(labels[:, i] == 1)) for i, n in enumerate(names)}
    else:
        counts = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    return {"n": len(d), "counts": counts}


def eval_sample(dataset: Any, n: int, seed: int = 0) -> EvalSample:
    """Stack ``n`` items of ``dataset``: a prefix of its class-stratified seeded order
    (``medxai.data.sampling``), so that smaller samples are prefixes of larger ones."""
    from medxai.data.sampling import sample_indices

    index, how = sample_indices(dataset, n, seed)
    items = [dataset[i] for i in index]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([torch.as_tensor(it["label"]) for it in items])
    masks = has = sc = None
    if "mask" in items[0]:
        masks = torch.stack([torch.as_tensor(it["mask"]).bool() for it in items])
        if masks.ndim == 3:
            masks = masks[:, None]
        has = torch.tensor([bool(it.get("has_mask", True)) for it in items])
    if "shortcut_mask" in items[0]:
        sc = torch.stack([torch.as_tensor(it["shortcut_mask"]).bool() for it in items])
        if sc.ndim == 3:
            sc = sc[:, None]
    return EvalSample(x, y, [str(it["id"]) for it in items], masks, has, sc, extra={"how": how, "index": index})
