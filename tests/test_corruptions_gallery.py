"""The gallery PNG: written, one row per corruption, columns clean + severities."""

import numpy as np
from PIL import Image

from medxai.corruptions import example_fundus, gallery


def test_gallery_png_is_written_with_one_row_per_corruption(tmp_path):
    names = ["light_leakage", "motion_blur", "underexposure"]
    p = gallery(example_fundus(64), tmp_path / "g.png", names=names, severities=[1, 2, 4])
    img = np.asarray(Image.open(p).convert("RGB"))
    h, w, _ = img.shape
    assert p.exists() and 0.85 < (w / 4) / (h / len(names)) < 1.15  # 4 columns (clean + 3), 3 rows of ~square cells
    # the image content is there: the fundus' red and the glow's near-white both appear
    assert (img[..., 0] > 150).mean() > 0.05 and ((img > 240).all(-1)).mean() > 0.01
