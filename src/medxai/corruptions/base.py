"""The corruption registry and ``apply``: one call for every corruption, batched, in torch.

Every corruption is a function ``fn(x, severity, generator) -> x'`` on float32 (B, C, H, W) in
[0, 1], registered with its maximum severity and its parameter table. Tables are written for a
224-px image (ImageNet-C's size) and spatial parameters scale with ``min(H, W) / 224`` so that a
severity looks alike at 64 and at 512 px. Random draws (noise fields, blur angles, glow
directions) are made in the same order for every severity, so with one seed a larger severity is
the same corruption, only stronger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from medxai._util.registry import Registry
from medxai._util.validate import check_images
from medxai.errors import InputError

REFERENCE_SIZE = 224

CorruptionFn = Callable[[torch.Tensor, int, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: ``fn``, its severities 1..``max_severity`` and its ``table``
    (one entry per severity, at 224 px); ``kind``: noise, blur, photometric, digital, fundus."""

    name: str
    fn: CorruptionFn
    max_severity: int
    kind: str
    table: tuple = field(default_factory=tuple)
    source: str = ""
    #: input ranks it takes: (4,) images only, (4, 5) volumes (B, C, D, H, W) too
    image_ndims: tuple[int, ...] = (4,)


#: name -> ``Corruption``.
REGISTRY: Registry[Corruption] = Registry("corruption")


def register(name: str, *, table: Sequence, kind: str, source: str,
             volumes: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register ``fn`` under ``name``; its severities are 1..len(table); ``volumes``: it also takes
    (B, C, D, H, W) (its spatial code runs over the trailing dims and is tested on volumes)."""

    def deco(fn: CorruptionFn) -> CorruptionFn:
        REGISTRY.add(name, Corruption(name, fn, len(table), kind, tuple(table), source, (4, 5) if volumes else (4,)))
        return fn

    return deco


#: kinds of the imaging modalities' own artefacts: run when asked for (by kind or name), not by default
MODALITIES = ("mri", "ultrasound", "dermoscopy", "histology")


def list_corruptions(kind: str | None = None, *, modalities: bool = False) -> list[str]:
    """Registered corruption names of one ``kind``, or (None) the general ones that apply to any
    image, plus the modality artefacts (``MODALITIES``) with ``modalities=True``; sorted."""
    if kind is not None:
        return [n for n, c in REGISTRY.items() if c.kind == kind]
    return [n for n, c in REGISTRY.items() if modalities or c.kind not in MODALITIES]


def max_severity(name: str) -> int:
    return REGISTRY.get(name).max_severity


def size_scale(x: torch.Tensor) -> float:
    """Spatial parameters are given at 224 px; they scale by ``min(H, W) / 224``."""
    return min(x.shape[-2:]) / REFERENCE_SIZE


def apply(x: torch.Tensor, name: str, severity: int, seed: int | None = None) -> torch.Tensor:
    """Corrupt a batch: x (B, C, H, W) (volumes (B, C, D, H, W) where the corruption takes them) float in
    [0, 1] -> same shape, dtype and device, in [0, 1].

    ``severity`` 0 returns an unchanged copy; 1..``max_severity(name)`` otherwise. ``seed`` makes
    the random draws deterministic (a generator on x's device); None uses torch's global RNG.
    """
    c = REGISTRY.get(name)
    if x.ndim == 5 and 5 not in c.image_ndims:
        raise InputError(f"corruption {name!r} takes images (B, C, H, W), not volumes; volume-ready: "
                         f"{[n for n, k in REGISTRY.items() if 5 in k.image_ndims]}")
    check_images(x, "x", ndim=c.image_ndims)
    if isinstance(severity, bool) or int(severity) != severity or not 0 <= int(severity) <= c.max_severity:
        raise InputError(f"severity of {name!r} must be an integer in 0..{c.max_severity}, got {severity!r}")
    severity = int(severity)
    if severity == 0:
        return x.clone()
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device).manual_seed(int(seed) % 2**63)
    out = c.fn(x.float(), severity, gen)
    return out.clamp(0, 1).to(x.dtype)


def rand(shape: Sequence[int], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=gen, device=like.device, dtype=torch.float32)


def randn(shape: Sequence[int], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, device=like.device, dtype=torch.float32)
