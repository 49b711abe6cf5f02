"""Image transforms: resize + centre crop, grayscale <-> RGB, Graham fundus preprocessing, CLAHE,
and seeded training augmentations that move masks with their images.

Tensor functions take (C, H, W) or (B, C, H, W) float in [0, 1] (masks: bool, same layout). Item
transforms (classes) take and return a dataset item dict: ``image`` and every key ending in
``mask`` (``mask``, ``shortcut_mask``, ``evidence_mask``...) are moved together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medxai._util.seed import derive_seed
from medxai.errors import ConfigError

Item = dict[str, Any]

__all__ = ["CLAHE", "Compose", "Graham", "RandomAugment", "ResizeCrop", "ToChannels", "centre_crop", "clahe",
           "estimate_fundus_radius", "graham", "mask_keys", "resize_centre_crop", "resize_shorter", "to_gray",
           "to_rgb"]


def mask_keys(item: Item) -> list[str]:
    """The keys of an item that hold masks (moved with the image by geometric transforms)."""
    return [k for k, v in item.items() if k.endswith("mask") and isinstance(v, torch.Tensor)]


# ----------------------------------------------------------------------------- resize and crop


def _resize(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    squeeze = x.ndim == 3
    xb = x[None] if squeeze else x
    if xb.dtype == torch.bool:
        out = F.interpolate(xb.to(torch.float32), size=hw, mode="nearest-exact") > 0.5
    elif mode == "nearest":
        out = F.interpolate(xb, size=hw, mode="nearest-exact")
    else:
        down = hw[0] < xb.shape[-2] or hw[1] < xb.shape[-1]
        out = F.interpolate(xb, size=hw, mode=mode, align_corners=False, antialias=down).clamp_(0.0, 1.0)
    return out[0] if squeeze else out


def resize_shorter(x: torch.Tensor, size: int, *, mode: str = "bilinear") -> torch.Tensor:
    """Resize so the shorter side is ``size`` (aspect kept; the longer side rounded).

    Float images: bilinear (antialiased when shrinking), clamped to [0, 1]; bool masks: nearest.
    """
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    s = size / min(h, w)
    hw = (size, max(1, round(w * s))) if h <= w else (max(1, round(h * s)), size)
    return _resize(x, hw, mode)


def centre_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The central ``size`` x ``size`` (or (h, w)) window; offsets round((H - h) / 2) like torchvision."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        raise ConfigError(f"centre_crop: crop {th}x{tw} larger than the image {h}x{w}")
    top, left = round((h - th) / 2), round((w - tw) / 2)
    return x[..., top:top + th, left:left + tw]


def resize_centre_crop(x: torch.Tensor, size: int, *, mode: str = "bilinear") -> torch.Tensor:
    """Resize the shorter side to ``size`` then centre-crop to ``size`` x ``size``."""
    return centre_crop(resize_shorter(x, size, mode=mode), size)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(.., 1, H, W) -> (.., 3, H, W) by repetition; 3 channels unchanged."""
    c = x.shape[-3]
    if c == 3:
        return x
    if c != 1:
        raise ConfigError(f"to_rgb needs 1 or 3 channels, got {c}")
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(.., 3, H, W) -> (.., 1, H, W) by ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B); 1 channel unchanged."""
    c = x.shape[-3]
    if c == 1:
        return x
    if c != 3:
        raise ConfigError(f"to_gray needs 1 or 3 channels, got {c}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------- Graham


def estimate_fundus_radius(img: np.ndarray) -> float:
    """Graham's estimate: on the middle row (channels summed), half the number of pixels brighter
    than a tenth of the row's mean. ``img``: (H, W, C) or (H, W)."""
    a = np.asarray(img, dtype=np.float64)
    row = a[a.shape[0] // 2]
    x = row.sum(axis=-1) if row.ndim == 2 else row
    return float((x > x.mean() / 10).sum() / 2)


def graham(img: np.ndarray, radius: int = 300, *, fill: float = 128 / 255, return_scale: bool = False
           ) -> np.ndarray | tuple[np.ndarray, float]:
    """Graham's fundus preprocessing (Kaggle DR 2015 winner; Graham, "Kaggle diabetic retinopathy
    detection competition report", 2015), in 8-bit units as his OpenCV code:

    1. scale the image so the estimated fundus radius (:func:`estimate_fundus_radius`) is ``radius``
       (bilinear; values rounded to integers like cv2.resize on uint8);
    2. ``out = 4 * img - 4 * GaussianBlur(img, sigma=radius / 30) + 128``, the blur with reflect-101
       borders truncated at 3 sigma and rounded, the result saturated to [0, 255];
    3. keep the disc of radius ``int(0.9 * radius)`` around the image centre; outside it the value
       is ``fill`` (Graham's code: 128, i.e. 128/255 here).

    ``img``: float (H, W, C) in [0, 1]. Returns float32 (H', W', C) in [0, 1] (and the scale factor).
    """
    from skimage.filters import gaussian

    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    r = estimate_fundus_radius(a)
    if r <= 0:
        raise ConfigError("graham: no fundus field found (the middle row is black)")
    s = radius / r
    h, w = a.shape[:2]
    hw = (max(1, round(h * s)), max(1, round(w * s)))
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None] * 255.0
    if hw != (h, w):
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)
    a8 = t[0].permute(1, 2, 0).numpy().round().clip(0, 255).astype(np.float64)
    blur = gaussian(a8, sigma=radius / 30, mode="mirror", truncate=3.0, channel_axis=-1,
                    preserve_range=True).round()
    out = np.clip(np.round(4 * a8 - 4 * blur + 128), 0, 255) / 255.0
    yy, xx = np.ogrid[: hw[0], : hw[1]]
    rr = int(0.9 * radius)
    inside = (xx - hw[1] // 2) ** 2 + (yy - hw[0] // 2) ** 2 <= rr**2
    out = np.where(inside[..., None], out, fill).astype(np.float32)
    return (out, s) if return_scale else out


# --------------------------------------------------------------------------------------- CLAHE


def clahe(img: np.ndarray | torch.Tensor, *, clip_limit: float = 0.01, kernel_size: int | None = None,
          nbins: int = 256) -> np.ndarray | torch.Tensor:
    """Contrast-limited adaptive histogram equalisation (skimage ``equalize_adapthist``), for X-rays.

    numpy (H, W) / (H, W, C) or a tensor (C, H, W); float in [0, 1]; same type and layout back.
    Colour images are equalised on their value channel (skimage's rule).
    """
    from skimage.exposure import equalize_adapthist

    if isinstance(img, torch.Tensor):
        a = img.detach().cpu().numpy().transpose(1, 2, 0)
        out = clahe(a, clip_limit=clip_limit, kernel_size=kernel_size, nbins=nbins)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).to(img.device, img.dtype)
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        return equalize_adapthist(a[..., 0], kernel_size=kernel_size, clip_limit=clip_limit,
                                  nbins=nbins).astype(np.float32)[..., None]
    return equalize_adapthist(a, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins).astype(np.float32)


# ------------------------------------------------------------------------------ item transforms


class Compose:
    """Apply item transforms in order; ``set_epoch`` reaches the ones that have it."""

    def __init__(self, transforms: Sequence[Callable[[Item], Item]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, item: Item) -> Item:
        for t in self.transforms:
            item = t(item)
        return item

    def set_epoch(self, epoch: int) -> None:
        for t in self.transforms:
            if hasattr(t, "set_epoch"):
                t.set_epoch(epoch)


@dataclass
class ResizeCrop:
    """Resize the shorter side to ``size`` and centre-crop, image (bilinear) and masks (nearest) alike."""

    size: int

    def __call__(self, item: Item) -> Item:
        item = dict(item)
        item["image"] = resize_centre_crop(item["image"], self.size)
        for k in mask_keys(item):
            item[k] = resize_centre_crop(item[k], self.size)
        return item


@dataclass
class ToChannels:
    """Force 1 (luma) or 3 (repeated) image channels."""

    channels: int

    def __call__(self, item: Item) -> Item:
        item = dict(item)
        item["image"] = to_rgb(item["image"]) if self.channels == 3 else to_gray(item["image"])
        return item


@dataclass
class Graham:
    """:func:`graham` on the item's image (3 channels), masks scaled by the same factor (nearest);
    follow it with :class:`ResizeCrop` to get a fixed size."""

    radius: int = 300
    fill: float = 128 / 255

    def __call__(self, item: Item) -> Item:
        item = dict(item)
        img = item["image"]
        out, _ = graham(img.detach().cpu().numpy().transpose(1, 2, 0), self.radius, fill=self.fill,
                        return_scale=True)
        item["image"] = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).to(img.device)
        for k in mask_keys(item):
            item[k] = _resize(item[k], tuple(out.shape[:2]), "nearest")
        return item


@dataclass
class CLAHE:
    """:func:`clahe` on the item's image."""

    clip_limit: float = 0.01
    kernel_size: int | None = None

    def __call__(self, item: Item) -> Item:
        item = dict(item)
        item["image"] = clahe(item["image"], clip_limit=self.clip_limit, kernel_size=self.kernel_size)
        return item


@dataclass
class RandomAugment:
    """Seeded training augmentation: flips, small affine (rotation, scale, translation), brightness
    and contrast. Geometric parameters are shared by the image and all its masks (bilinear for the
    image with zero padding, nearest for masks). The parameters of an item are a pure function of
    ``(seed, epoch, item id)``: the same in any DataLoader worker and in any order.

    Brightness adds ``b ~ U(-brightness, brightness)``; contrast scales around the image mean by
    ``c ~ U(1 - contrast, 1 + contrast)``; the result is clipped to [0, 1]. Horizontal flips swap
    the patient's sides (the heart in a chest X-ray): set ``hflip=0`` where laterality matters.
    """

    seed: int = 0
    hflip: float = 0.5
    vflip: float = 0.0
    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.1
    contrast: float = 0.1
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def params(self, key: str) -> dict[str, float | bool]:
        rng = np.random.default_rng(derive_seed("augment", self.seed, self.epoch, key))
        u = rng.random(8)
        return {"hflip": bool(u[0] < self.hflip), "vflip": bool(u[1] < self.vflip),
                "angle": float((2 * u[2] - 1) * self.degrees),
                "scale": float(self.scale[0] + (self.scale[1] - self.scale[0]) * u[3]),
                "tx": float((2 * u[4] - 1) * self.translate), "ty": float((2 * u[5] - 1) * self.translate),
                "brightness": float((2 * u[6] - 1) * self.brightness),
                "contrast": float(1 + (2 * u[7] - 1) * self.contrast)}

    def __call__(self, item: Item) -> Item:
        p = self.params(str(item.get("id", "")))
        item = dict(item)
        keys = ["image", *mask_keys(item)]
        for k in keys:
            item[k] = self.geometric(item[k], p)
        x = item["image"]
        mean = x.mean()
        item["image"] = ((x - mean) * p["contrast"] + mean + p["brightness"]).clamp(0.0, 1.0)
        return item

    @staticmethod
    def geometric(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        """Apply the affine then the flips of ``p`` to a (C, H, W) image or bool mask."""
        identity = p["angle"] == 0 and p["scale"] == 1 and p["tx"] == 0 and p["ty"] == 0
        if not identity:
            h, w = x.shape[-2:]
            th = math.radians(p["angle"])
            cos, sin = math.cos(th) / p["scale"], math.sin(th) / p["scale"]
            # output -> input map in pixel units, then expressed in normalised coordinates
            theta = torch.tensor([[cos, -sin * h / w, -2 * p["tx"]],
                                  [sin * w / h, cos, -2 * p["ty"]]], dtype=torch.float32)[None]
            grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
            is_mask = x.dtype == torch.bool
            src = x[None].to(torch.float32)
            out = F.grid_sample(src, grid.to(src.device), mode="nearest" if is_mask else "bilinear",
                                padding_mode="zeros", align_corners=False)[0]
            x = out > 0.5 if is_mask else out.clamp(0.0, 1.0).to(x.dtype)
        if p["hflip"]:
            x = torch.flip(x, dims=(-1,))
        if p["vflip"]:
            x = torch.flip(x, dims=(-2,))
        return x
