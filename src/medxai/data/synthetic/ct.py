"""Chest CT volumes: ``ct-nodule`` (binary: no_nodule / nodule), with the nodules' 3-D masks.

Each volume is (D, H, W) = (slices, rows, columns), D = option ``depth`` (default ``size``), H = W =
``size``, rendered in Hounsfield units (int16, clipped to [-1024, 3071]) and windowed with the lung
window (center -600, width 1500; :data:`medxai.data.volumes.VOLUME_WINDOWS`) to float32 [0, 1], C = 1.
Nominal spacing: 350 mm field of view in-plane (350 / size mm) and a 300 mm stack (300 / D mm per slice).

Anatomy (in fractions of the field of view, jittered per volume): air (-1000 HU) around an elliptic
body (soft tissue 40 HU inside a subcutaneous fat rim of -100 HU), two ellipsoidal lungs (-860 HU) with
a few vessels (-40 HU) running from the hila, the heart / mediastinum between them (40 HU) indenting
the lungs, and a vertebral body behind (cancellous 300 HU, cortical rim 800 HU); Gaussian noise of
sd 15 HU. A ``nodule`` volume holds one to three solid nodules (10-80 HU), ellipsoids of 12-25 mm
radius (at least one voxel per axis) centred on a lung voxel and cut to the lungs; the mask is exactly
the voxels they replace (``lesions=False`` renders the same volume without them, masks unchanged).

``shortcut=p``: a burned-in "R" overlay (the 2-D studies' marker glyph, 1500 HU) on a contiguous run of
25-50 % of the slices, present with probability p on nodule volumes and 1 - p on the others in "train"
and "val", 0.5 in "test" (unless ``shortcut_in_test=True``); ``shortcut_mask`` (D, H, W) says where,
and the nodule mask never includes it. Deterministic per (seed, split, index), streams as the 2-D studies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medxai._util.registry import Registry
from medxai._util.seed import derive_seed
from medxai.data.synthetic._api import ANATOMY, LABEL, LESION, NOISE, SHORTCUT, SPLITS, draw_class, resolve_shares
from medxai.data.synthetic._draw import glyph_mask
from medxai.errors import ConfigError

CLASS_NAMES = ("no_nodule", "nodule")
MIN_VOLUME_SIZE, MAX_VOLUME_SIZE, MIN_DEPTH = 16, 256, 4
HU_MIN, HU_MAX = -1024, 3071
FOV_MM, STACK_MM = 350.0, 300.0
HU = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "lung": -860.0, "vessel": -40.0, "bone": 300.0, "cortex": 800.0,
      "marker": 1500.0}
NOISE_HU = 15.0
F32 = np.float32


@dataclass
class VolumeContext:
    """What a volume renderer gets: shape (D, H, W), spacing mm, label, options, its seeded streams."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    label: Any
    options: Mapping[str, Any]
    base_seed: int
    lesions: bool = True

    def stream(self, *key: int) -> np.random.Generator:
        return np.random.default_rng((self.base_seed, *key))


@dataclass
class RenderedVolume:
    """A renderer's output: float32 (D, H, W) Hounsfield units (before noise) and the lesion mask bool (D, H, W)."""

    hu: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class VolumeStudySpec:
    """A synthetic volume study (the volume twin of :class:`~medxai.data.synthetic._api.StudySpec`)."""

    name: str
    class_names: tuple[str, ...]
    task: str
    channels: int
    render: Callable[[VolumeContext], RenderedVolume]
    draw_label: Callable[[np.random.Generator, Mapping[str, Any]], Any]
    abnormal: Callable[[Any], bool]
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    mirrors: str
    window: str = "lung"


VOLUME_STUDY_REGISTRY: Registry[VolumeStudySpec] = Registry("synthetic volume study")


# ---------------------------------------------------------------------------------- anatomy


def _coords(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres as fractions: z (D, 1, 1), y (1, H, 1), x (1, 1, W)."""
    d, h, w = shape
    return ((np.arange(d, dtype=F32) + F32(0.5)) / F32(d)).reshape(d, 1, 1), \
        ((np.arange(h, dtype=F32) + F32(0.5)) / F32(h)).reshape(1, h, 1), \
        ((np.arange(w, dtype=F32) + F32(0.5)) / F32(w)).reshape(1, 1, w)


def _ellipsoid(z, y, x, c: tuple[float, float, float], r: tuple[float, float, float]) -> np.ndarray:
    """((z - cz) / rz)^2 + ((y - cy) / ry)^2 + ((x - cx) / rx)^2, broadcast to (D, H, W)."""
    return ((z - F32(c[0])) / F32(r[0])) ** 2 + ((y - F32(c[1])) / F32(r[1])) ** 2 + ((x - F32(c[2])) / F32(r[2])) ** 2


def _segment_d2(z, y, x, p0: np.ndarray, p1: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Squared distance (in units of ``scale`` per axis) of every voxel to the segment p0-p1 (fractions)."""
    pts = [a / F32(s) for a, s in zip((z, y, x), scale, strict=True)]
    a, b = p0 / scale, p1 / scale
    ab = b - a
    t = sum((pts[k] - F32(a[k])) * F32(ab[k]) for k in range(3)) / F32(max(float(ab @ ab), 1e-12))
    t = np.clip(t, 0.0, 1.0)
    return sum((pts[k] - F32(a[k]) - t * F32(ab[k])) ** 2 for k in range(3))


def _anatomy(ctx: VolumeContext) -> tuple[np.ndarray, np.ndarray]:
    """Base HU (D, H, W) without noise and the lung region bool (D, H, W)."""
    a = ctx.stream(ANATOMY)
    z, y, x = _coords(ctx.shape)
    s = a.uniform(0.92, 1.04)
    cy, cx = 0.5 + a.uniform(-0.02, 0.02), 0.5 + a.uniform(-0.02, 0.02)
    body = ((y - F32(cy)) / F32(0.30 * s)) ** 2 + ((x - F32(cx)) / F32(0.42 * s)) ** 2
    hu = np.full(ctx.shape, HU["air"], F32)
    hu[np.broadcast_to(body <= 1.0, ctx.shape)] = HU["fat"]
    hu[np.broadcast_to(body <= 0.8, ctx.shape)] = HU["soft"]
    heart = _ellipsoid(z, y, x, (0.75, cy + 0.02, cx + 0.03), (0.45, 0.12 * s, 0.1 * s)) <= 1.0
    lungs = np.zeros(ctx.shape, bool)
    for side in (-1.0, 1.0):
        lc = (0.55 + a.uniform(-0.03, 0.03), cy - 0.02, cx + side * 0.17 * s)
        lungs |= _ellipsoid(z, y, x, lc, (0.5, 0.2 * s * a.uniform(0.95, 1.05), 0.12 * s)) <= 1.0
    lungs &= ~heart
    hu[lungs] = HU["lung"]
    vscale = np.asarray([1.0 / ctx.shape[0], 1.0 / ctx.shape[1], 1.0 / ctx.shape[2]])
    for side in (-1.0, 1.0):
        hilum = np.asarray([0.55, cy, cx + side * 0.08 * s])
        for _ in range(int(a.integers(3, 7))):
            end = np.asarray([a.uniform(0.15, 0.95), cy + a.uniform(-0.15, 0.15) * s,
                              cx + side * a.uniform(0.15, 0.27) * s])
            vessel = _segment_d2(z, y, x, hilum, end, vscale) <= max(0.36, (0.012 * ctx.shape[1] * s) ** 2)
            hu[vessel & lungs] = HU["vessel"]
    spine = ((y - F32(cy + 0.2 * s)) / F32(0.055 * s)) ** 2 + ((x - F32(cx)) / F32(0.055 * s)) ** 2
    hu[np.broadcast_to(spine <= 1.0, ctx.shape)] = HU["cortex"]
    hu[np.broadcast_to(spine <= 0.64, ctx.shape)] = HU["bone"]
    return hu, lungs


def _nodules(ctx: VolumeContext, lungs: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The nodules of a ``nodule`` volume: (region bool (D, H, W) cut to the lungs, HU) each."""
    rng = ctx.stream(LESION)
    where = np.argwhere(lungs)
    if not ctx.label or len(where) == 0:
        return []
    count = 1 + int(np.searchsorted(np.cumsum([0.6, 0.3, 0.1]), rng.random(), side="right"))
    z, y, x = (np.arange(n, dtype=F32).reshape(sh) for n, sh in zip(ctx.shape, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)),
                                                                     strict=True))
    out = []
    for _ in range(min(count, 3)):
        centre = where[int(rng.integers(len(where)))].astype(np.float64)
        r_mm = rng.uniform(0.035, 0.07) * FOV_MM
        stretch = rng.uniform(0.8, 1.25, 3)
        radii = tuple(max(1.0, r_mm * st / sp) for st, sp in zip(stretch, ctx.spacing, strict=True))
        region = (_ellipsoid(z, y, x, tuple(centre), radii) <= 1.0) & lungs
        out.append((region, float(rng.uniform(10.0, 80.0))))
    return out


def _render_nodule(ctx: VolumeContext) -> RenderedVolume:
    hu, lungs = _anatomy(ctx)
    mask = np.zeros(ctx.shape, bool)
    for region, value in _nodules(ctx, lungs):
        mask |= region
        if ctx.lesions:
            hu[region] = F32(value)
    return RenderedVolume(hu, mask)


def _resolve_ct(opts: dict[str, Any]) -> dict[str, Any]:
    out = resolve_shares("ct-nodule", (0.5, 0.5), opts)
    depth = opts.pop("depth", None)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, np.integer))
                              or not MIN_DEPTH <= int(depth) <= MAX_VOLUME_SIZE):
        raise ConfigError(f"ct-nodule: depth must be an integer in [{MIN_DEPTH}, {MAX_VOLUME_SIZE}], got {depth!r}")
    out["depth"] = None if depth is None else int(depth)
    return out


CT_NODULE = VolumeStudySpec(
    name="ct-nodule", class_names=CLASS_NAMES, task="binary", channels=1, render=_render_nodule,
    draw_label=draw_class, abnormal=lambda label: int(label) == 1, resolve=_resolve_ct,
    mirrors="chest CT nodule detection (LIDC-IDRI / LUNA16: scans with and without nodules, 3-D masks)")
VOLUME_STUDY_REGISTRY.add(CT_NODULE.name, CT_NODULE)
VOLUME_STUDIES: tuple[str, ...] = tuple(VOLUME_STUDY_REGISTRY.names())


# ------------------------------------------------------------------------------------ public API


def resolve_volume_options(spec: VolumeStudySpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """A volume study's options with their defaults (``lesions``, ``shortcut_in_test``, the study's own)."""
    opts = dict(options)
    lesions = opts.pop("lesions", True)
    sit = opts.pop("shortcut_in_test", False)
    for key, v in (("lesions", lesions), ("shortcut_in_test", sit)):
        if not isinstance(v, (bool, np.bool_)):
            raise ConfigError(f"{spec.name}: {key} must be True or False, got {v!r}")
    resolved = spec.resolve(opts)
    if opts:
        raise ConfigError(f"{spec.name}: unknown option(s) {sorted(opts)}")
    resolved["lesions"] = bool(lesions)
    if sit:
        resolved["shortcut_in_test"] = True
    return resolved


def check_volume_args(study: str, size: int, seed: int, split: str, shortcut: float | None) -> VolumeStudySpec:
    spec = VOLUME_STUDY_REGISTRY.get(study)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
            or not MIN_VOLUME_SIZE <= int(size) <= MAX_VOLUME_SIZE:
        raise ConfigError(f"size must be an integer in [{MIN_VOLUME_SIZE}, {MAX_VOLUME_SIZE}], got {size!r}")
    if not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if shortcut is not None and (isinstance(shortcut, bool) or not isinstance(shortcut, (int, float, np.integer,
                                                                                          np.floating))
                                 or not 0.0 <= float(shortcut) <= 1.0):
        raise ConfigError(f"shortcut must be a probability in [0, 1] or None, got {shortcut!r}")
    return spec


def volume_context(spec: VolumeStudySpec, index: int, size: int, seed: int, split: str,
                   opts: Mapping[str, Any]) -> VolumeContext:
    """The context of volume ``index`` with its label drawn (no rendering)."""
    depth = int(opts.get("depth") or size)
    shape = (depth, int(size), int(size))
    spacing = (STACK_MM / depth, FOV_MM / size, FOV_MM / size)
    base = derive_seed(spec.name, int(seed), split, int(index))
    ctx = VolumeContext(shape=shape, spacing=spacing, label=None, options=opts, base_seed=base,
                        lesions=bool(opts["lesions"]))
    ctx.label = spec.draw_label(ctx.stream(LABEL), opts)
    return ctx


def _shortcut(ctx: VolumeContext, spec: VolumeStudySpec, split: str, p: float) -> np.ndarray | None:
    """The overlay's voxels bool (D, H, W), or None when this volume carries none."""
    rng = ctx.stream(SHORTCUT)
    follow = split != "test" or bool(ctx.options.get("shortcut_in_test", False))
    prob = (p if spec.abnormal(ctx.label) else 1.0 - p) if follow else 0.5
    if not rng.random() < prob:
        return None
    glyph = glyph_mask(rng, ctx.shape[1])
    d = ctx.shape[0]
    run = max(1, round(d * rng.uniform(0.25, 0.5)))
    start = int(rng.integers(0, d - run + 1))
    out = np.zeros(ctx.shape, bool)
    out[start:start + run] = glyph
    return out


def generate_volume(study: str, index: int, size: int = 32, seed: int = 0, split: str = "train",
                    shortcut: float | None = None, **options: Any) -> dict[str, Any]:
    """Render volume ``index`` of a synthetic volume study.

    Returns ``hu`` int16 (D, H, W) Hounsfield units; ``image`` float32 (1, D, H, W) in [0, 1] (the study's
    window, lung for ct-nodule, applied to ``hu``); ``label`` int; ``mask`` bool (D, H, W) (the nodules);
    ``shortcut_present`` bool; ``shortcut_mask`` bool (D, H, W), or None without ``shortcut``; ``spacing``
    (sd, sh, sw) mm; ``window`` (its name); ``id`` "<study>-<split>-<index:06d>". Options: ``depth``
    (slices, default ``size``), ``shares`` / ``balanced`` (default 50 / 50), ``lesions``, ``shortcut_in_test``.
    """
    from medxai.data.volumes import apply_window, resolve_volume_window

    spec = check_volume_args(study, size, seed, split, shortcut)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or int(index) < 0:
        raise ConfigError(f"index must be a non-negative integer, got {index!r}")
    opts = resolve_volume_options(spec, options)
    ctx = volume_context(spec, int(index), int(size), int(seed), split, opts)
    out = spec.render(ctx)
    hu = out.hu + ctx.stream(NOISE).standard_normal(ctx.shape, dtype=np.float32) * F32(NOISE_HU)
    gmask = _shortcut(ctx, spec, split, float(shortcut)) if shortcut is not None else None
    mask = out.mask
    if gmask is not None:
        hu[gmask] = HU["marker"]
        mask = mask & ~gmask
    hu16 = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    image = apply_window(torch.from_numpy(hu16.astype(np.float32))[None], resolve_volume_window(spec.window))
    smask = None if shortcut is None else (gmask if gmask is not None else np.zeros(ctx.shape, bool))
    return {"hu": hu16, "image": image.numpy(), "label": int(ctx.label), "mask": mask,
            "shortcut_present": gmask is not None, "shortcut_mask": smask, "spacing": ctx.spacing,
            "window": spec.window, "id": f"{spec.name}-{split}-{int(index):06d}"}


def volume_label(study: str, index: int, size: int = 32, seed: int = 0, split: str = "train",
                 **options: Any) -> int:
    """Volume ``index``'s label from its seed alone (no rendering); equals ``generate_volume(...)["label"]``."""
    spec = check_volume_args(study, size, seed, split, None)
    return int(volume_context(spec, index, size, seed, split, resolve_volume_options(spec, options)).label)


__all__ = ["CLASS_NAMES", "VOLUME_STUDIES", "VOLUME_STUDY_REGISTRY", "VolumeStudySpec", "generate_volume",
           "volume_label"]
