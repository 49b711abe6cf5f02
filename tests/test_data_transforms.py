"""Transforms: Graham preprocessing on scikit-image's retina photograph, resize / crop, channels,
CLAHE, and seeded augmentations that move masks with their images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medxai.data import load_image
from medxai.data.transforms import (
    CLAHE,
    Compose,
    Graham,
    RandomAugment,
    ResizeCrop,
    centre_crop,
    clahe,
    estimate_fundus_radius,
    graham,
    resize_centre_crop,
    resize_shorter,
    to_gray,
    to_rgb,
)

SKIMAGE_DATA = Path(__import__("skimage.data", fromlist=["x"]).__file__).parent


@pytest.fixture(scope="module")
def retina_small() -> np.ndarray:
    """retina.jpg (1411 px) reduced to 353 px with Pillow, float (H, W, 3)."""
    with Image.open(SKIMAGE_DATA / "retina.jpg") as im:
        small = im.resize((353, 353), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255


def test_fundus_radius_estimate_analytic_and_on_retina() -> None:
    h, w, r = 301, 401, 100
    yy, xx = np.ogrid[:h, :w]
    disc = ((xx - 200) ** 2 + (yy - 150) ** 2 <= r**2).astype(np.float32)
    img = np.stack([disc * 0.6, disc * 0.3, disc * 0.1], -1)
    assert estimate_fundus_radius(img) == (2 * r + 1) / 2
    x = load_image(SKIMAGE_DATA / "retina.jpg")
    row = x[x.shape[0] // 2].sum(-1)
    field = np.nonzero(row > row.mean() / 10)[0]
    assert estimate_fundus_radius(x) == len(field) / 2 == 696.0
    assert field.min() < 15 and field.max() > 1395  # the field spans the photograph's width


def test_graham_matches_its_formula_at_unit_scale(retina_small: np.ndarray) -> None:
    r = estimate_fundus_radius(retina_small)
    out, s = graham(retina_small, radius=r, return_scale=True)
    assert s == 1.0 and out.shape == retina_small.shape
    a8 = np.round(retina_small.astype(np.float64) * 255)
    blur = np.round(ndimage.gaussian_filter(a8, sigma=(r / 30, r / 30, 0), mode="mirror", truncate=3.0))
    ref = np.clip(np.round(4 * a8 - 4 * blur + 128), 0, 255) / 255
    h, w = out.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    inside = (xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= int(0.9 * r) ** 2
    np.testing.assert_allclose(out[inside], ref[inside], atol=1.01 / 255)
    assert np.mean(np.abs(out[inside] - ref[inside]) > 1e-6) < 0.01
    assert np.all(out[~inside] == np.float32(128 / 255))


def test_graham_on_retina_scale_mean_and_mask() -> None:
    x = load_image(SKIMAGE_DATA / "retina.jpg")
    out, s = graham(x, radius=200, return_scale=True)
    assert s == pytest.approx(200 / 696)
    assert out.shape == (round(1411 * s), round(1411 * s), 3)
    h, w = out.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((xx - w // 2) ** 2 + (yy - h // 2) ** 2)
    inside, outside = out[d <= 180 - 1], out[d > 180 + 1]
    assert abs(inside.mean() - 0.5) < 0.02  # local average subtracted: mean ~128/255
    assert inside.std() > 0.05  # but the vessels and the disc remain
    assert np.all(outside == np.float32(128 / 255))
    black = graham(x, radius=200, fill=0.0)
    assert np.all(black[d > 181] == 0) and np.array_equal(black[d <= 179], out[d <= 179])


def test_graham_on_microaneurysms_keeps_the_dark_dots() -> None:
    m = load_image(SKIMAGE_DATA / "microaneurysms.png")
    out = graham(m, radius=51)
    assert out.shape == (102, 102, 1)
    yy, xx = np.ogrid[:102, :102]
    inside = (xx - 51) ** 2 + (yy - 51) ** 2 <= int(0.9 * 51) ** 2
    darkest = np.unravel_index(np.argmin(np.where(inside, m[..., 0], 1)), m.shape[:2])
    assert out[darkest][0] < 0.35  # a dark lesion stays dark after the local-mean subtraction
    assert abs(out[inside].mean() - 0.5) < 0.05


def test_graham_item_transform_scales_masks_alike(retina_small: np.ndarray) -> None:
    img = torch.from_numpy(retina_small.transpose(2, 0, 1).copy())
    mask = torch.zeros(1, 353, 353, dtype=torch.bool)
    mask[:, 100:200, 150:250] = True
    s = 88 / estimate_fundus_radius(retina_small)
    g = Graham(radius=88)({"image": img, "mask": mask, "id": "r"})
    assert g["image"].shape[1:] == g["mask"].shape[1:] == (round(353 * s), round(353 * s))
    rows = torch.nonzero(g["mask"][0].any(1))[:, 0]
    cols = torch.nonzero(g["mask"][0].any(0))[:, 0]
    assert abs(rows.min().item() - 100 * s) <= 1 and abs(rows.max().item() + 1 - 200 * s) <= 1
    assert abs(cols.min().item() - 150 * s) <= 1 and abs(cols.max().item() + 1 - 250 * s) <= 1
    item = Compose([Graham(radius=88), ResizeCrop(64)])({"image": img, "mask": mask, "id": "r"})
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert 0.45 < item["image"].mean().item() < 0.55


def test_resize_shorter_and_centre_crop() -> None:
    x = torch.rand(1, 3, 40, 60)
    y = resize_shorter(x, 20)
    assert y.shape == (1, 3, 20, 30)
    np.testing.assert_allclose(y.mean().item(), x.mean().item(), atol=0.01)
    # antialiased bilinear = Pillow's BILINEAR (triangle filter widened by the scale), channel by channel
    ref = np.stack([np.asarray(Image.fromarray(x[0, c].numpy(), mode="F").resize((30, 20), Image.BILINEAR))
                    for c in range(3)])
    np.testing.assert_allclose(y[0].numpy(), ref, atol=1e-5)
    c = centre_crop(torch.arange(7 * 9).reshape(1, 7, 9), 3)
    assert c[0, 0].tolist() == [21, 22, 23] and c.shape == (1, 3, 3)  # top = round(2), left = round(3)
    m = torch.zeros(1, 40, 60, dtype=torch.bool)
    m[:, 10:30, 20:40] = True
    mc = resize_centre_crop(m, 20)
    assert mc.dtype == torch.bool and mc.shape == (1, 20, 20)
    assert mc.sum().item() == 10 * 10 and mc[0, 5:15, 5:15].all()  # 20x20 box -> 10x10, cropped by 5 left


def test_gray_rgb_round_trip() -> None:
    g = torch.rand(1, 5, 6)
    rgb = to_rgb(g)
    assert rgb.shape == (3, 5, 6) and torch.equal(rgb[2], g[0])
    torch.testing.assert_close(to_gray(rgb), g, atol=1e-6, rtol=0)
    c = torch.rand(2, 3, 4, 4)
    ref = 0.299 * c[:, 0] + 0.587 * c[:, 1] + 0.114 * c[:, 2]
    torch.testing.assert_close(to_gray(c)[:, 0], ref, atol=1e-6, rtol=0)


def test_clahe_raises_local_contrast_and_matches_skimage() -> None:
    from skimage.exposure import equalize_adapthist

    x = load_image(SKIMAGE_DATA / "microaneurysms.png")[..., 0]
    low = 0.4 + 0.2 * x  # a washed-out radiograph-like image
    out = clahe(low[..., None])[..., 0]
    np.testing.assert_allclose(out, equalize_adapthist(low, clip_limit=0.01), atol=1e-6)
    assert out.std() > 2 * low.std()
    t = CLAHE()({"image": torch.from_numpy(low[None].copy())})["image"]
    np.testing.assert_allclose(t[0].numpy(), out, atol=1e-6)


def test_augment_moves_masks_with_images_and_is_seeded() -> None:
    torch.manual_seed(0)
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[:, 8:20, 5:14] = True
    img = torch.cat([m.float(), torch.rand(2, 32, 32) * 0.2])
    aug = RandomAugment(seed=3, hflip=0.5, vflip=0.5, degrees=15, translate=0.1, brightness=0.0, contrast=0.0)
    ious = []
    for k in range(20):
        item = aug({"image": img, "mask": m, "shortcut_mask": m, "id": f"x{k}"})
        moved = item["image"][0] > 0.5
        inter = (moved & item["mask"][0]).sum().item()
        union = (moved | item["mask"][0]).sum().item()
        ious.append(inter / union)
        assert torch.equal(item["mask"], item["shortcut_mask"])
        again = aug({"image": img, "mask": m, "id": f"x{k}"})
        assert torch.equal(again["image"], item["image"]) and torch.equal(again["mask"], item["mask"])
    assert min(ious) > 0.8
    aug.set_epoch(1)
    changed = sum(not torch.equal(aug({"image": img, "mask": m, "id": f"x{k}"})["mask"], m) for k in range(5))
    assert changed == 5


def test_augment_geometry_analytic() -> None:
    x = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6) / 35
    base = {"hflip": False, "vflip": False, "angle": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0}
    rot = RandomAugment.geometric(x, {**base, "angle": 90.0})
    torch.testing.assert_close(rot, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)
    shifted = RandomAugment.geometric(x, {**base, "tx": 2 / 6})
    torch.testing.assert_close(shifted[..., 2:], x[..., :4], atol=1e-6, rtol=0)
    assert torch.all(shifted[..., :2] == 0)
    flipped = RandomAugment.geometric(x, {**base, "hflip": True, "vflip": True})
    assert torch.equal(flipped, torch.flip(x, dims=(-2, -1)))
    assert torch.equal(RandomAugment.geometric(x, base), x)


def test_augment_photometric_analytic() -> None:
    x = torch.full((1, 4, 4), 0.5)
    x[0, 0, 0] = 0.1
    aug = RandomAugment(seed=0, hflip=0, degrees=0, translate=0, scale=(1, 1), brightness=0.1, contrast=0.2)
    p = aug.params("a")
    out = aug({"image": x, "id": "a"})["image"]
    mean = x.mean()
    torch.testing.assert_close(out, ((x - mean) * p["contrast"] + mean + p["brightness"]).clamp(0, 1))
    assert -0.1 <= p["brightness"] <= 0.1 and 0.8 <= p["contrast"] <= 1.2
