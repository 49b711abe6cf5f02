"""Study registry, per-index rendering contract and the public ``generate`` / ``generate_one``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medxai._util.registry import Registry
from medxai._util.seed import derive_seed
from medxai.data.synthetic._base import SyntheticStudy
from medxai.data.synthetic._draw import clip, glyph_mask
from medxai.errors import ConfigError

SPLITS = ("train", "val", "test")
MIN_SIZE, MAX_SIZE = 16, 2048

# Independent random streams per image, so that e.g. the lesions drawn never shift the anatomy.
LABEL, ANATOMY, LESION, NOISE, SHORTCUT = 0, 1, 2, 3, 4


@dataclass
class Context:
    """What a renderer gets for one image: size, label, options and its random streams."""

    size: int
    label: Any
    options: Mapping[str, Any]
    base_seed: int
    lesions: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def stream(self, *key: int) -> np.random.Generator:
        """A generator for a named stream of this image (same key, same numbers)."""
        return np.random.default_rng((self.base_seed, *key))


@dataclass
class Rendered:
    """A renderer's output: float32 channel-first (C, H, W) image, about [0, 1], and its evidence masks."""

    image: np.ndarray
    mask: np.ndarray
    glyph_value: tuple[float, ...]
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """A synthetic study: its classes, task, channels, default class shares and renderer.

    ``abnormal(label) -> bool`` says which images the shortcut marker follows; ``draw_label(rng,
    options)`` draws one label; ``options`` are the study's options with their defaults.
    """

    name: str
    class_names: tuple[str, ...]
    task: str
    channels: int
    render: Callable[[Context], Rendered]
    draw_label: Callable[[np.random.Generator, Mapping[str, Any]], Any]
    abnormal: Callable[[Any], bool]
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    mirrors: str
    extra_masks: tuple[str, ...] = ()

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"


STUDY_REGISTRY: Registry[StudySpec] = Registry("synthetic study")


def register(spec: StudySpec) -> StudySpec:
    STUDY_REGISTRY.add(spec.name, spec)
    return spec


# ------------------------------------------------------------------------------ option helpers


def resolve_shares(name: str, defaults: tuple[float, ...], options: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``shares`` / ``balanced`` for a single-label study into normalised class shares."""
    balanced = bool(options.pop("balanced", False))
    shares = options.pop("shares", None)
    if balanced and shares is not None:
        raise ConfigError(f"{name}: give either balanced=True or shares=..., not both")
    k = len(defaults)
    if balanced:
        shares = [1.0 / k] * k
    elif shares is None:
        shares = list(defaults)
    else:
        shares = [float(s) for s in shares]
        if len(shares) != k or any(not np.isfinite(s) or s < 0 for s in shares) or sum(shares) <= 0:
            raise ConfigError(f"{name}: shares must be {k} non-negative numbers with a positive sum, got {shares}")
    total = sum(shares)
    return {"shares": [s / total for s in shares], "balanced": balanced}


def draw_class(rng: np.random.Generator, options: Mapping[str, Any]) -> int:
    """One class index with probabilities ``options["shares"]``."""
    cum = np.cumsum(options["shares"])
    return int(min(np.searchsorted(cum, rng.random(), side="right"), len(cum) - 1))


def _check_unknown(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"{name}: unknown option(s) {sorted(options)}")


# ------------------------------------------------------------------------------------ public API


def _check_args(study: str, size: int, seed: int, split: str, shortcut: float | None) -> StudySpec:
    spec = STUDY_REGISTRY.get(study)
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ConfigError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if shortcut is not None and not (isinstance(shortcut, (int, float, np.integer, np.floating))
                                     and 0.0 <= float(shortcut) <= 1.0):
        raise ConfigError(f"shortcut must be a probability in [0, 1] or None, got {shortcut!r}")
    return spec


def _resolve(spec: StudySpec, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    lesions = bool(opts.pop("lesions", True))
    resolved = spec.resolve(opts)
    _check_unknown(spec.name, opts)
    resolved["lesions"] = lesions
    return resolved


def _one(spec: StudySpec, index: int, size: int, seed: int, split: str, shortcut: float | None,
         opts: dict[str, Any]) -> dict[str, Any]:
    base = derive_seed(spec.name, int(seed), split, int(index))
    ctx = Context(size=int(size), label=None, options=opts, base_seed=base, lesions=opts["lesions"])
    ctx.label = spec.draw_label(ctx.stream(LABEL), opts)
    out = spec.render(ctx)
    chw = clip(out.image, 0.0, 1.0)
    chw *= np.float32(255.0)
    chw += np.float32(0.5)
    chw = chw.astype(np.uint8)
    img = np.empty((size, size, chw.shape[0]), np.uint8)
    for c in range(chw.shape[0]):  # channel by channel: far faster than one transposing copy
        img[..., c] = chw[c]
    mask = out.mask
    present, gmask = False, None
    if shortcut is not None:
        rng = ctx.stream(SHORTCUT)
        u = rng.random()
        p = 0.5 if split == "test" else (float(shortcut) if spec.abnormal(ctx.label) else 1.0 - float(shortcut))
        present = bool(u < p)
        gmask = glyph_mask(rng, size) if present else np.zeros((size, size), bool)
        if present:
            img[gmask] = np.round(np.asarray(out.glyph_value) * 255).astype(np.uint8)
            mask = mask & ~gmask
            out.extra_masks = {k: v & ~gmask for k, v in out.extra_masks.items()}
    label = ctx.label
    return {"image": img, "label": label, "mask": mask, "shortcut_present": present, "shortcut_mask": gmask,
            "extra_masks": out.extra_masks, "id": f"{spec.name}-{split}-{int(index):06d}"}


def generate_one(study: str, index: int, size: int = 128, seed: int = 0, split: str = "train",
                 shortcut: float | None = None, **options: Any) -> dict[str, Any]:
    """Render image ``index`` of a synthetic study alone (for lazy datasets).

    Returns a dict: ``image`` uint8 (H, W, C); ``label`` (int, or float32 (K,) in CheXpert's
    vocabulary for multilabel); ``mask`` bool (H, W) or (K, H, W); ``shortcut_present`` bool;
    ``shortcut_mask`` bool (H, W) or None when no shortcut was requested; ``extra_masks`` dict of
    bool (H, W); ``id``. Identical to row ``index`` of :func:`generate` with the same arguments.
    """
    spec = _check_args(study, size, seed, split, shortcut)
    if not isinstance(index, (int, np.integer)) or int(index) < 0:
        raise ConfigError(f"index must be a non-negative integer, got {index!r}")
    return _one(spec, int(index), int(size), int(seed), split, shortcut, _resolve(spec, options))


def generate(study: str, n: int, size: int = 128, seed: int = 0, split: str = "train",
             shortcut: float | None = None, **options: Any) -> SyntheticStudy:
    """Generate ``n`` images of a synthetic study (see ``STUDIES``) with labels and evidence masks.

    Deterministic per (study, seed, split, index): the same call gives the same bytes, and row i
    equals :func:`generate_one` (study, i, ...). Options:

    - single-label studies: ``shares`` (one weight per class, normalised) or ``balanced=True``;
      defaults follow the real data (fundus-dr 73/7/15/2.5/2.5 %, cxr-pneumonia 27/73 %,
      skin-lesion 75.2/12.5/12.3 %). Labels are drawn per image, so shares hold in expectation.
    - ``cxr-multilabel``: ``prevalence`` (one or five probabilities, default 0.3/0.3/0.25/0.25/0.3)
      or ``balanced=True`` (0.5 each), ``uncertain_share`` (default 0.1, label -1) and
      ``blank_share`` (default 0, label NaN).
    - all: ``lesions=False`` renders each image's lesion-free counterfactual (same anatomy, noise
      and marker; labels and masks unchanged), e.g. to check where the lesions changed pixels.

    ``shortcut=p`` draws an "R" marker in a top corner on abnormal images (any grade > 0,
    PNEUMONIA, mel, any positive finding) with probability p and on the others with 1 - p in the
    "train" and "val" splits, and with probability 0.5 whatever the label in "test";
    ``shortcut_present`` (N,) and ``shortcut_masks`` (N, H, W) say where. Masks never include it.
    """
    spec = _check_args(study, size, seed, split, shortcut)
    if not isinstance(n, (int, np.integer)) or int(n) < 0:
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    n, size = int(n), int(size)
    opts = _resolve(spec, options)
    k = len(spec.class_names)
    images = np.zeros((n, size, size, spec.channels), np.uint8)
    masks = np.zeros((n, k, size, size) if spec.multilabel else (n, size, size), bool)
    labels = np.zeros((n, k), np.float32) if spec.multilabel else np.zeros(n, np.int64)
    extra = {name: np.zeros((n, size, size), bool) for name in spec.extra_masks}
    present = np.zeros(n, bool) if shortcut is not None else None
    smasks = np.zeros((n, size, size), bool) if shortcut is not None else None
    ids = []
    for i in range(n):
        one = _one(spec, i, size, int(seed), split, shortcut, opts)
        images[i], masks[i], labels[i] = one["image"], one["mask"], one["label"]
        for name in spec.extra_masks:
            extra[name][i] = one["extra_masks"][name]
        if present is not None:
            present[i], smasks[i] = one["shortcut_present"], one["shortcut_mask"]
        ids.append(one["id"])
    return SyntheticStudy(study=spec.name, split=split, seed=int(seed), images=images, labels=labels, masks=masks,
                          class_names=list(spec.class_names), task=spec.task, ids=ids,
                          shortcut=None if shortcut is None else float(shortcut), shortcut_present=present,
                          shortcut_masks=smasks, extra_masks=extra, options=opts)
