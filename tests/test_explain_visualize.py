"""Visualisation: magnitude invariance, shared scales, grayscale, diverging colours, LIME views."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from medxai.errors import InputError
from medxai.explain import grid, lime_view, overlay, percentile_scale


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def _panel(fig, i, j, cols):
    return np.asarray(fig.axes[i * cols + j].images[0].get_array())


@pytest.mark.parametrize("factor", [1e-8, 1e-12, 1e6])
@pytest.mark.parametrize("signed", [True, False])
def test_overlay_invariant_to_magnitude(factor, signed):
    img = torch.rand(3, 16, 16, generator=_rng())
    m = torch.randn(16, 16, generator=_rng(1), dtype=torch.float64)
    m = m if signed else m.abs()
    ref = overlay(img, m)
    small = overlay(img, m * factor)
    assert np.array_equal(ref, small)
    # and not trivially constant: the map shows up
    assert np.ptp(ref[..., 0]) > 0.2
    # tiny maps do not turn white (captum #393): colours equal those of the unscaled map, not 1
    assert not np.allclose(small[..., :3], 1.0)


def test_overlay_values_follow_the_colormap():
    img = torch.full((3, 4, 4), 0.5)
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[0, 0], m[0, 1], m[0, 2] = 2.0, -2.0, 1.0
    out = overlay(img, m, scale=2.0, alpha=0.5)
    cmap = colormaps["RdBu_r"]
    np.testing.assert_allclose(out[0, 0, :3], 0.25 + 0.5 * np.asarray(cmap(1.0)[:3]))
    np.testing.assert_allclose(out[0, 1, :3], 0.25 + 0.5 * np.asarray(cmap(0.0)[:3]))
    np.testing.assert_allclose(out[0, 2, :3], 0.25 + 0.5 * np.asarray(cmap(0.75)[:3]))
    np.testing.assert_allclose(out[1, 1, :3], 0.25 + 0.5 * np.asarray(cmap(0.5)[:3]))
    assert out[0, 0, 0] > out[0, 0, 2] and out[0, 1, 2] > out[0, 1, 0]  # red positive, blue negative
    assert np.all(out[..., 3] == 1)
    # unsigned: jet from 0 to the scale; explicit vmin/vmax
    out = overlay(img, m.abs(), vmin=0.0, vmax=4.0, alpha=1.0)
    np.testing.assert_allclose(out[0, 0, :3], colormaps["jet"](0.5)[:3])


def test_percentile_scale():
    m = torch.arange(1000, dtype=torch.float64)
    assert percentile_scale(m, 99.5) == pytest.approx(np.percentile(np.arange(1000), 99.5))
    sparse = torch.zeros(1000)
    sparse[3] = -5e-9
    assert percentile_scale(sparse) == pytest.approx(5e-9)  # percentile 0 -> max |map|
    assert percentile_scale(torch.zeros(5)) == 1.0


def test_grayscale_stays_gray_where_the_overlay_is_transparent():
    img = torch.rand(1, 12, 12, generator=_rng(2))
    m = torch.zeros(12, 12)
    m[:4, :4] = 1.0
    m[8:, 8:] = float("nan")
    out = overlay(img, m, fade=True)
    gray = img[0].double().numpy()
    for c in range(3):  # outside the blob: exactly the gray image, in all three channels
        np.testing.assert_array_equal(out[4:, :, c], gray[4:])
    assert not np.allclose(out[:4, :4, 0], out[:4, :4, 2])  # the blob is coloured
    # in a grid, the image column of a gray image is gray
    fig = grid(img[None], {"m": m[None]}, colorbar=False)
    panel = _panel(fig, 0, 0, 2)
    np.testing.assert_array_equal(panel[..., 0], panel[..., 1])
    np.testing.assert_array_equal(panel[..., 0], gray)


def _two_methods():
    img = torch.full((2, 3, 8, 8), 0.3)
    a = torch.zeros(2, 8, 8)
    a[:, 0, 0] = 1.0
    a[:, 1:, :] = torch.linspace(0, 1, 56).reshape(7, 8)
    b = a.clone()
    b[:, 7, 7] = 50.0  # method b has a much larger range
    b[:, 6, :] = 100.0
    return img, a, b


def test_global_scale_equal_values_equal_colours():
    img, a, b = _two_methods()
    fig = grid(img, {"a": a, "b": b}, shared_scale="global", colorbar=True)
    pa, pb = _panel(fig, 0, 1, 3), _panel(fig, 0, 2, 3)
    np.testing.assert_array_equal(pa[0, 0], pb[0, 0])  # value 1.0 in both panels
    np.testing.assert_array_equal(pa[3], pb[3])  # identical rows of values
    # per method: value 1.0 is the top of a's scale but low on b's
    fig = grid(img, {"a": a, "b": b}, shared_scale="per_method")
    pa, pb = _panel(fig, 0, 1, 3), _panel(fig, 0, 2, 3)
    assert not np.array_equal(pa[0, 0], pb[0, 0])
    # rows share the scale of their method: row 1 equals row 0 (same maps)
    np.testing.assert_array_equal(_panel(fig, 1, 2, 3), pb)
    # colour bars: one per method, spanning [0, scale]
    bars = fig.axes[6:]
    assert len(bars) == 2
    assert bars[1].get_xlim() == pytest.approx((0.0, percentile_scale([b[0], b[1]])))


def test_per_method_scale_shared_across_models():
    img, a, b = _two_methods()
    maps = {("standard", "saliency"): a, ("robust", "saliency"): b}
    fig = grid(img, maps, shared_scale="per_method", show_images=False)
    np.testing.assert_array_equal(_panel(fig, 0, 0, 2)[0, 0], _panel(fig, 0, 1, 2)[0, 0])
    assert fig.axes[0].get_title() == "standard / saliency"
    fig = grid(img, maps, shared_scale="none", show_images=False)
    assert not np.array_equal(_panel(fig, 0, 0, 2)[0, 0], _panel(fig, 0, 1, 2)[0, 0])
    # "none" scales each panel by its own percentile: equal to overlay alone
    np.testing.assert_array_equal(_panel(fig, 0, 1, 2), overlay(img[0], b[0]))


def test_grid_saves_png_with_labels(tmp_path):
    img, a, b = _two_methods()
    path = tmp_path / "g.png"
    fig = grid(img, torch.stack([a, b], 1), row_labels=["x1", "x2"], col_labels=["A", "B"], path=path, dpi=50)
    assert fig.axes[1].get_title() == "A" and fig.axes[0].get_ylabel() == "x1"
    with Image.open(path) as im:
        assert im.size == (3 * 2 * 50, round((2 * 2 + 0.6) * 50))
    with pytest.raises(InputError):
        grid(img, {"a": a[:1]})
    with pytest.raises(InputError):
        grid(img, {"a": a}, shared_scale="per_row")


def test_lime_views():
    img = torch.full((3, 8, 8), 0.5)
    seg = (torch.arange(8)[:, None] // 4) * 2 + torch.arange(8)[None, :] // 4  # 4 quadrants
    w = torch.tensor([0.3, -0.5, 0.1, -0.01])
    pc = lime_view(img, w, segments=seg, view="pros_cons", num_features=2, boundaries=False)
    # top-2 by |w|: quadrant 1 (con, red) and quadrant 0 (pro, green); the rest untouched
    np.testing.assert_allclose(pc[0, 0, :3], [0.25, 0.65, 0.25])
    np.testing.assert_allclose(pc[0, 7, :3], [0.7, 0.25, 0.25])
    np.testing.assert_allclose(pc[7, 0, :3], [0.5, 0.5, 0.5])
    pos = lime_view(img, w, segments=seg, view="positive", num_features=5, boundaries=False)
    np.testing.assert_allclose(pos[7, 0, :3], [0.25, 0.65, 0.25])  # w=0.1 > 0 is kept
    np.testing.assert_allclose(pos[0, 7, :3], [0.5, 0.5, 0.5])
    hide = lime_view(img, w, segments=seg, view="hide_rest", num_features=1, boundaries=False)
    assert np.all(hide[:4, :4, :3] == 0.5) and np.all(hide[4:, :, :3] == 0) and np.all(hide[:, 4:, :3] == 0)
    # from the pixel map alone (as Lime.attribute returns it): the same view
    pixel_map = w[seg]
    np.testing.assert_array_equal(lime_view(img, pixel_map[None], view="pros_cons", num_features=2,
                                            boundaries=False), pc)
    edged = lime_view(img, w, segments=seg, view="pros_cons", num_features=2)
    assert tuple(edged[3, 0, :3]) == (1.0, 1.0, 0.0) and tuple(edged[0, 4, :3]) == (1.0, 1.0, 0.0)
    assert tuple(edged[4, 0, :3]) == (0.5, 0.5, 0.5)  # not chosen: no edge
    fig = grid(img[None], {"lime": pixel_map[None]}, views={"lime": "pros_cons"}, colorbar=False)
    np.testing.assert_array_equal(_panel(fig, 0, 1, 2), lime_view(img, pixel_map, view="pros_cons"))


def test_refuses_bad_images():
    with pytest.raises(InputError):
        overlay(torch.full((3, 4, 4), 1.5), torch.zeros(4, 4))
    with pytest.raises(InputError):
        overlay(torch.rand(2, 4, 4), torch.zeros(4, 4))
