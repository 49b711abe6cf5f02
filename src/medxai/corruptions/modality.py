"""Imaging modalities' own artefacts (issue 18), registered under their modality as ``kind``:

- ``mri``: ``kspace_motion``, ``ghosting``, ``spike``, ``gibbs``, ``bias_field``, ``rician_noise``
  (corruptions/mri.py, made in k-space);
- ``ultrasound`` (also OCT): ``speckle`` (corruptions/speckle.py);
- ``dermoscopy``: ``black_corners``, ``ink_marks``, ``hair`` (corruptions/dermoscopy.py);
- ``histology``: ``stain_variation``, ``bubbles`` (corruptions/histology.py).

``modality_gallery(kind, path)`` draws one figure per modality on a real or phantom image
(``example_image(kind)``) with ``corruptions.gallery.gallery``. Formulas, tables, sources: docs/artefacts.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medxai.corruptions import dermoscopy, histology, mri, speckle  # noqa: F401  (register)
from medxai.corruptions.base import MODALITIES, list_corruptions
from medxai.corruptions.gallery import gallery
from medxai.errors import InputError


def _resize(img: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return F.interpolate(t, size=(size, size), mode="area").clamp(0, 1)


def example_lesion(size: int = 128) -> torch.Tensor:
    """A synthetic dermoscopy-like picture (skin tone, a brown irregular lesion), (1, 3, size, size).

    scikit-image has no dermoscopy photograph; this one is drawn, not real."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    ang = np.arctan2(yy, xx)
    r = np.hypot(yy, xx) / (0.45 * (1 + 0.12 * np.sin(3 * ang) + 0.08 * np.cos(5 * ang + 1)))
    lesion = np.clip(1.2 - r, 0, 1) ** 0.7
    skin = np.array([0.86, 0.66, 0.56])
    brown = np.array([0.38, 0.22, 0.14])
    img = skin * (1 - lesion[..., None]) + brown * lesion[..., None]
    return _resize(img, size)


def example_image(kind: str, size: int = 128) -> torch.Tensor:
    """A (1, C, size, size) example in [0, 1] for ``kind``: mri and ultrasound: scikit-image's
    Shepp-Logan phantom (grey); histology: ``skimage.data.immunohistochemistry`` (RGB);
    dermoscopy: ``example_lesion`` (synthetic)."""
    import skimage.data

    if kind in ("mri", "ultrasound"):
        return _resize(skimage.data.shepp_logan_phantom(), size)
    if kind == "histology":
        return _resize(skimage.data.immunohistochemistry()[:256, :256] / 255.0, size)
    if kind == "dermoscopy":
        return example_lesion(size)
    raise InputError(f"kind must be one of {MODALITIES}, got {kind!r}")


def modality_gallery(kind: str, path: str | Path, size: int = 128, seed: int = 0) -> Path:
    """Write the gallery PNG of every corruption of ``kind`` (rows) at severities 0-5 (columns)."""
    names = list_corruptions(kind)
    if not names:
        raise InputError(f"no corruption of kind {kind!r} is registered")
    return gallery(example_image(kind, size), path, names=names, seed=seed)


__all__ = ["MODALITIES", "example_image", "example_lesion", "modality_gallery"]
