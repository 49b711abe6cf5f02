"""The audit on volumes (B, C, D, H, W): which stages run, why the others do not, and the slice
viewer's data.

Every stage of the audit runs on volumes where the library function behind it accepts them;
:func:`stage_skips` names each stage that does not with its reason (the report lists them: a
stage is never run on volumes it would misread, never silently dropped). :func:`viewer_data`
gathers the shown volumes, their masks and the maps, quantised to bytes, for the report's slice
viewer (``medxai.report``: axial / coronal / sagittal planes, a slice slider, map and mask overlays).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

from medxai.pipeline.config import AuditConfig

__all__ = ["PLANES", "axial_slices", "corruption_skips", "is_volume_study", "key_slice",
           "method_skip", "stage_skips", "viewer_data"]

#: the viewer's planes: the axis of (D, H, W) each one slices
PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}
#: the viewer shows at most this many voxels along an axis (larger volumes are strided)
VIEWER_MAX = 64


def is_volume_study(study: str) -> bool:
    """Whether ``study`` is a synthetic volume study (``medxai.data.synthetic.VOLUME_STUDIES``)."""
    from medxai.data.synthetic import VOLUME_STUDIES

    return study in VOLUME_STUDIES


def method_skip(method: str, registry_name: str) -> str | None:
    """Why explainer ``registry_name`` cannot explain volumes (None: it can)."""
    from medxai.explain import REGISTRY

    ndims = getattr(REGISTRY.get(registry_name), "image_ndims", (4,))
    if 5 not in tuple(ndims):
        return f"{method} explains (B, C, H, W) images only: not run on volumes"
    return None


def corruption_skips(names: list[str]) -> dict[str, str]:
    """The corruptions of ``names`` whose registry entry does not take volumes (``image_ndims`` without 5),
    with the reason."""
    from medxai.corruptions import REGISTRY

    out = {}
    for n in names:
        c = REGISTRY.get(n)
        if 5 not in tuple(getattr(c, "image_ndims", (4,))):
            out[n] = f"corruption {n} is defined on (B, C, H, W) images only"
    return out


def stage_skips(cfg: AuditConfig) -> dict[str, str]:
    """Stages that do not run on volumes, each with its reason: ``corruption`` (none of the configured
    corruptions takes volumes), ``corruption/some`` (those that do not are left out of the table),
    ``gallery``, ``intervention``, ``discovery``. AutoAttack and the DeepFool / CW radius run on volumes
    (``medxai.attacks`` takes (B, C, D, H, W); Square's squares become cubes)."""
    out: dict[str, str] = {}
    if cfg.corruption.enabled:
        skipped = corruption_skips(cfg.corruption.names)
        if skipped and len(skipped) == len(cfg.corruption.names):
            out["corruption"] = ("no configured corruption applies to volumes ("
                                 + "; ".join(skipped.values()) + ")")
        elif skipped:
            out["corruption/some"] = "; ".join(skipped.values())
        if cfg.corruption.gallery:
            out["gallery"] = "the corruption gallery draws 2-D images: not drawn for volumes"
    if cfg.intervention.enabled:
        out["intervention"] = ("shortcut removal by intervention (medxai.evaluate.intervention: inpainting, "
                               "random control regions) is defined on (B, C, H, W) images only: not run on volumes")
    if cfg.discovery.enabled:
        out["discovery"] = "SpRAy clusters 2-D attribution maps: not run on volumes"
    return out


# -- the slice viewer's data ---------------------------------------------------------------------

def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


def _stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, -(-int(n) // VIEWER_MAX)) for n in shape)


def _grey(img: torch.Tensor) -> torch.Tensor:
    """(C, D, H, W) in [0, 1] -> (D, H, W): the only channel, or the channels' mean."""
    return img.float().mean(0) if img.shape[0] > 1 else img[0].float()


def key_slice(mask: torch.Tensor | None, m: torch.Tensor | None, depth: int) -> int:
    """The axial slice shown first: the one with the most mask voxels, else the most map mass, else the middle."""
    for v in (mask, m):
        if v is not None:
            per = v.reshape(v.shape[-3], -1).float().abs().sum(1)
            if float(per.max()) > 0:
                return int(per.argmax())
    return depth // 2


def viewer_data(x: torch.Tensor, masks: torch.Tensor | None, has_mask: torch.Tensor | None,
                maps: dict[str, torch.Tensor], scales: dict[str, float], ids: list[str],
                labels: list[str]) -> dict[str, Any]:
    """The slice viewer's JSON: per volume its (D, H, W) grey bytes and mask bits, per ``model|method``
    key the maps as bytes on the method's scale (``clip(map / scale, 0, 1) * 255``, the heat-map PNGs'
    scale); strided to at most ``VIEWER_MAX`` voxels per axis; arrays base64 in C order.

    x: (N, C, D, H, W) in [0, 1]; masks: (N, K, D, H, W) bool or None; maps[key]: (N, 1, D, H, W).
    """
    n = x.shape[0]
    sd, sh, sw = _stride(tuple(x.shape[2:]))
    vols = []
    for i in range(n):
        img = _grey(x[i])[::sd, ::sh, ::sw]
        mask = None
        if masks is not None and (has_mask is None or bool(has_mask[i])):
            mk = masks[i].any(0)[::sd, ::sh, ::sw]
            mask = mk if bool(mk.any()) else None
        first = next(iter(maps.values()), None)
        k = key_slice(mask, None if first is None else first[i, 0, ::sd, ::sh, ::sw], img.shape[0])
        vols.append({"id": ids[i], "label": labels[i], "shape": list(img.shape), "start": k,
                     "image": _b64((img.clamp(0, 1) * 255).round().cpu().numpy()),
                     "mask": None if mask is None else _b64(mask.cpu().numpy().astype(np.uint8))})
    out_maps = {}
    for key, m in maps.items():
        scale = scales.get(key.split("|", 1)[1]) or 1.0
        q = (m[:, 0, ::sd, ::sh, ::sw].float() / scale).clamp(0, 1) * 255
        out_maps[key] = [_b64(q[i].round().cpu().numpy()) for i in range(n)]
    return {"planes": list(PLANES), "stride": [sd, sh, sw], "volumes": vols, "maps": out_maps,
            "colormap": _inferno_lut()}


def _inferno_lut() -> str:
    """256 RGB entries of matplotlib's inferno (the heat maps' colour map), base64 bytes."""
    from matplotlib import colormaps

    lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return _b64(lut)


def axial_slices(s: Any) -> Any:
    """An ``EvalSample`` of volumes as 2-D images: each volume's axial slice (``key_slice``: through the
    most mask voxels, else the middle), for the report's static figures."""
    from medxai.pipeline.data import EvalSample

    ks = [key_slice(None if s.masks is None else s.masks[i].any(0), None, s.x.shape[2]) for i in range(len(s))]

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.stack([t[i][:, k] for i, k in enumerate(ks)])

    extra = {**s.extra, "slices": ks}
    return EvalSample(cut(s.x), s.y, [f"{sid} (slice {k})" for sid, k in zip(s.ids, ks, strict=True)],
                      cut(s.masks), s.has_mask, cut(s.shortcut_masks), extra)
