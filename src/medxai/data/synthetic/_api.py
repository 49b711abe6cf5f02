"""Study registry, per-index rendering contract and the public ``generate`` / ``generate_one``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medxai._util.registry import Registry
from medxai._util.seed import derive_seed
from medxai.data.synthetic._base import SyntheticStudy
from medxai.data.synthetic._draw import clip, glyph_mask, grating
from medxai.errors import ConfigError

SPLITS = ("train", "val", "test")
MIN_SIZE, MAX_SIZE = 16, 2048

# Independent random streams per image, so that e.g. the lesions drawn never shift the anatomy.
LABEL, ANATOMY, LESION, NOISE, SHORTCUT = 0, 1, 2, 3, 4
SITE = 10  # opt-in acquisition-site metadata (``sites=True``): (SITE, 0) draws site/sex/age, (SITE, 1) site noise
NONROBUST = 11  # opt-in non-robust texture (``nonrobust=amp``): which class's grating and its phase


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


# ------------------------------------------------------------------------------ acquisition sites

#: Defaults of the ``sites`` option: share of site-B images, strength of site B's acquisition shift.
SITE_B_SHARE, SITE_SHIFT = 0.3, 1.0
#: Site B at shift s: exposure times ``1 - SITE_DARKEN * s``, plus Gaussian noise of sd ``SITE_NOISE * s``.
SITE_DARKEN, SITE_NOISE = 0.3, 0.06
#: Age bands (years) of the synthetic ``age`` group, half-open.
SITE_AGE_BINS = [0, 40, 60, 120]


def _resolve_sites(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Pop ``sites`` / ``site_b_share`` / ``site_shift``; only recorded when on (default outputs unchanged)."""
    sites = opts.pop("sites", False)
    share, shift = opts.pop("site_b_share", None), opts.pop("site_shift", None)
    if not isinstance(sites, (bool, np.bool_)):
        raise ConfigError(f"{name}: sites must be True or False, got {sites!r}")
    if not sites:
        if share is not None or shift is not None:
            raise ConfigError(f"{name}: site_b_share / site_shift need sites=True")
        return {}
    share = SITE_B_SHARE if share is None else share
    shift = SITE_SHIFT if shift is None else shift
    if not isinstance(share, (int, float, np.integer, np.floating)) or not 0.0 <= float(share) <= 1.0:
        raise ConfigError(f"{name}: site_b_share must be a probability in [0, 1], got {share!r}")
    if not isinstance(shift, (int, float, np.integer, np.floating)) or not 0.0 <= float(shift) <= 3.0:
        raise ConfigError(f"{name}: site_shift must be a number in [0, 3], got {shift!r}")
    return {"sites": True, "site_b_share": float(share), "site_shift": float(shift)}


def site_metadata(base_seed: int, opts: Mapping[str, Any]) -> dict[str, Any]:
    """An image's metadata from its seed alone (no rendering): site "A" / "B" (B with probability
    ``site_b_share``), sex "F" / "M" (1:1), age in whole years (normal, mean 55, sd 18, clipped to [18, 95])."""
    rng = np.random.default_rng((base_seed, SITE, 0))
    site = "B" if rng.random() < float(opts["site_b_share"]) else "A"
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(np.clip(np.round(rng.normal(55.0, 18.0)), 18, 95))
    return {"site": site, "sex": sex, "age": age}


def site_groups(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata as group values: site, sex, and age as its band of ``SITE_AGE_BINS`` (e.g. "[40, 60)")."""
    from medxai.data.layouts import bin_label

    return {"site": str(meta["site"]), "sex": str(meta["sex"]), "age": bin_label(float(meta["age"]), SITE_AGE_BINS)}


def _acquire(image: np.ndarray, ctx: Context, opts: Mapping[str, Any]) -> np.ndarray:
    """Site B's acquisition on a rendered (C, H, W) image: darker exposure and stronger noise."""
    s = float(opts["site_shift"])
    noise = ctx.stream(SITE, 1).standard_normal(image.shape).astype(np.float32)
    return (image * np.float32(max(0.0, 1.0 - SITE_DARKEN * s)) + np.float32(SITE_NOISE * s) * noise).astype(
        np.float32)


# ------------------------------------------------------------------------------ non-robust texture

#: Largest ``nonrobust`` amplitude accepted, in /255.
NONROBUST_MAX = 32.0


def _prob(name: str, key: str, v: Any) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(v) <= 1.0:
        raise ConfigError(f"{name}: {key} must be a probability in [0, 1], got {v!r}")
    return float(v)


def resolve_nonrobust(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Pop ``nonrobust`` (amplitude, /255) / ``nonrobust_rate`` / ``nonrobust_conflict``; recorded only when on."""
    amp = opts.pop("nonrobust", None)
    rate, conflict = opts.pop("nonrobust_rate", None), opts.pop("nonrobust_conflict", None)
    if amp is None:
        if rate is not None or conflict is not None:
            raise ConfigError(f"{name}: nonrobust_rate / nonrobust_conflict need nonrobust=<amplitude /255>")
        return {}
    if isinstance(amp, (bool, np.bool_)) or not isinstance(amp, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(amp) <= NONROBUST_MAX:
        raise ConfigError(f"{name}: nonrobust must be an amplitude in [0, {NONROBUST_MAX:g}] (/255), got {amp!r}")
    return {"nonrobust": float(amp), "nonrobust_rate": _prob(name, "nonrobust_rate", 1.0 if rate is None else rate),
            "nonrobust_conflict": _prob(name, "nonrobust_conflict", 0.0 if conflict is None else conflict)}


def texture_class(base_seed: int, label: int, k: int, split: str, opts: Mapping[str, Any]) -> tuple[int, float]:
    """Which class's grating an image carries, and its phase (radians), from its seed alone (no rendering).

    In "test", a share ``nonrobust_conflict`` is forced to another class; otherwise the label's own with
    probability ``nonrobust_rate``, else another class (uniform over the other k - 1).
    """
    u_conflict, u_rate, u_pick, u_phase = np.random.default_rng((base_seed, NONROBUST)).random(4)
    agree = u_rate < float(opts["nonrobust_rate"])
    if split == "test" and u_conflict < float(opts["nonrobust_conflict"]):
        agree = False
    cls = int(label) if agree or k < 2 else (int(label) + 1 + min(int(u_pick * (k - 1)), k - 2)) % k
    return cls, float(2 * np.pi * u_phase)


def _texture(ctx: Context, spec: StudySpec, split: str, opts: Mapping[str, Any]) -> tuple[int, np.ndarray]:
    """An image's texture class and its additive float32 (H, W) texture (amplitude ``nonrobust`` /255)."""
    cls, phase = texture_class(ctx.base_seed, ctx.label, len(spec.class_names), split, opts)
    return cls, grating(ctx.size, cls, phase) * np.float32(float(opts["nonrobust"]) / 255.0)


def _quantize(image: np.ndarray, size: int) -> np.ndarray:
    """A float (C, H, W) image about [0, 1] as uint8 (H, W, C)."""
    chw = clip(image, 0.0, 1.0)
    chw *= np.float32(255.0)
    chw += np.float32(0.5)
    chw = chw.astype(np.uint8)
    img = np.empty((size, size, chw.shape[0]), np.uint8)
    for c in range(chw.shape[0]):  # channel by channel: far faster than one transposing copy
        img[..., c] = chw[c]
    return img


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
    shortcut_in_test = opts.pop("shortcut_in_test", False)
    if not isinstance(shortcut_in_test, (bool, np.bool_)):
        raise ConfigError(f"{spec.name}: shortcut_in_test must be True or False, got {shortcut_in_test!r}")
    sites = _resolve_sites(spec.name, opts)
    resolved = spec.resolve(opts)
    _check_unknown(spec.name, opts)
    resolved.update(sites)
    resolved["lesions"] = lesions
    if shortcut_in_test:  # only recorded when on, so default outputs (and their metadata) stay as they were
        resolved["shortcut_in_test"] = True
    return resolved


def _one(spec: StudySpec, index: int, size: int, seed: int, split: str, shortcut: float | None,
         opts: dict[str, Any], counterfactual: bool = False) -> dict[str, Any]:
    base = derive_seed(spec.name, int(seed), split, int(index))
    ctx = Context(size=int(size), label=None, options=opts, base_seed=base, lesions=opts["lesions"])
    ctx.label = spec.draw_label(ctx.stream(LABEL), opts)
    out = spec.render(ctx)
    meta = site_metadata(base, opts) if opts.get("sites") else None
    if meta is not None and meta["site"] == "B":
        out.image = _acquire(out.image, ctx, opts)
    tex = _texture(ctx, spec, split, opts) if opts.get("nonrobust") is not None else None
    plain = _quantize(out.image, size) if tex is not None and counterfactual else None  # without the texture
    img = _quantize(out.image if tex is None else out.image + tex[1][None], size)
    mask = out.mask
    present, gmask = False, None
    clean = img.copy() if counterfactual else None
    if shortcut is not None:
        rng = ctx.stream(SHORTCUT)
        u = rng.random()
        follow = split != "test" or bool(opts.get("shortcut_in_test", False))
        p = (float(shortcut) if spec.abnormal(ctx.label) else 1.0 - float(shortcut)) if follow else 0.5
        present = bool(u < p)
        gmask = glyph_mask(rng, size) if present else np.zeros((size, size), bool)
        if present:
            img[gmask] = np.round(np.asarray(out.glyph_value) * 255).astype(np.uint8)
            if plain is not None:
                plain[gmask] = img[gmask]
            mask = mask & ~gmask
            out.extra_masks = {k: v & ~gmask for k, v in out.extra_masks.items()}
    label = ctx.label
    res = {"image": img, "label": label, "mask": mask, "shortcut_present": present, "shortcut_mask": gmask,
           "extra_masks": out.extra_masks, "id": f"{spec.name}-{split}-{int(index):06d}"}
    if counterfactual:
        res["counterfactual"] = clean
    if tex is not None:
        res["texture_class"] = tex[0]
        if plain is not None:
            res["without_texture"] = plain
    if meta is not None:
        res["groups"] = site_groups(meta)
    return res


def generate_one(study: str, index: int, size: int = 128, seed: int = 0, split: str = "train",
                 shortcut: float | None = None, *, counterfactual: bool = False, **options: Any) -> dict[str, Any]:
    """Render image ``index`` of a synthetic study alone (for lazy datasets).

    Returns a dict: ``image`` uint8 (H, W, C); ``label`` (int, or float32 (K,) in CheXpert's
    vocabulary for multilabel); ``mask`` bool (H, W) or (K, H, W); ``shortcut_present`` bool;
    ``shortcut_mask`` bool (H, W) or None when no shortcut was requested; ``extra_masks`` dict of
    bool (H, W); ``id``. Identical to row ``index`` of :func:`generate` with the same arguments.
    ``counterfactual=True`` adds ``counterfactual``: the uint8 (H, W, C) image as rendered before the
    shortcut marker was pasted (equal to ``image`` when no marker is present), e.g. for a "remove the
    shortcut" intervention (DeGrave et al. 2021). With option ``nonrobust`` (skin-lesion, fundus-dr) it
    also returns ``texture_class`` (int: whose grating the image carries) and, with ``counterfactual=True``,
    ``without_texture``: the uint8 image rendered without the texture (marker included), see docs/synthetic.md.
    """
    spec = _check_args(study, size, seed, split, shortcut)
    if not isinstance(index, (int, np.integer)) or int(index) < 0:
        raise ConfigError(f"index must be a non-negative integer, got {index!r}")
    return _one(spec, int(index), int(size), int(seed), split, shortcut, _resolve(spec, options),
                counterfactual=bool(counterfactual))


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
    - all: ``sites=True`` draws per-image metadata from the image's seed (:func:`site_metadata`:
      site A/B, B with share ``site_b_share`` (default 0.3), sex F/M, age in years) and renders
      site B darker (exposure x ``1 - 0.3 s``) and noisier (Gaussian sd ``0.06 s``), s =
      ``site_shift`` (default 1, in [0, 3]); :func:`generate_one` then returns ``groups``
      {"site", "sex", "age" (band "[40, 60)")}. Off by default (renders unchanged).
    - ``skin-lesion``, ``fundus-dr``: ``nonrobust=a`` adds a faint class-specific grating of amplitude
      a/255 over the whole image (Ilyas et al. 2019's non-robust features), the label's own with
      probability ``nonrobust_rate`` (default 1), and in "test" another class's on a share
      ``nonrobust_conflict`` (default 0); see :func:`texture_class` and docs/synthetic.md. Off by default.

    ``shortcut=p`` draws an "R" marker in a top corner on abnormal images (any grade > 0,
    PNEUMONIA, mel, any positive finding) with probability p and on the others with 1 - p in the
    "train" and "val" splits, and with probability 0.5 whatever the label in "test" (unless option
    ``shortcut_in_test=True``: then "test" follows the same label correlation as "train");
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
