"""Modality artefacts (issue 18): MRI in k-space, speckle, dermoscopy, histology.

k-space artefacts are checked against their Fourier-domain definitions (numpy FFT written here),
against torchio (Ghosting, Spike, BiasField) and MONAI (GibbsNoise) where they import; the others
against their formulas with the seeded draws, scikit-image's HED transform and scipy's gamma law."""

import itertools
import math

import numpy as np
import pytest
import torch

from medxai.corruptions import REGISTRY, apply, list_corruptions, mri
from medxai.corruptions import dermoscopy as derm
from medxai.corruptions import histology as histo
from medxai.corruptions import speckle as spk
from medxai.corruptions.modality import MODALITIES, example_image, modality_gallery
from medxai.errors import InputError

NAMES = [n for k in MODALITIES for n in list_corruptions(k)]
RGB_ONLY = {"stain_variation"}


def phantom(size=32, batch=2):
    """Shepp-Logan phantom (grey) and a shifted copy: (batch, 1, size, size)."""
    x = example_image("mri", size)
    return torch.cat([x, torch.roll(x, (3, -2), (2, 3)) * 0.8][:batch] + [x] * max(0, batch - 2))


def rgb(size=32, batch=2):
    h = example_image("histology", size)
    return torch.cat([h, example_image("dermoscopy", size)][:batch])


def image_for(name, size=32):
    return rgb(size) if REGISTRY.get(name).kind in ("histology", "dermoscopy") else phantom(size)


def np_spectrum(x):
    return np.fft.fftshift(np.fft.fft2(x.double().numpy()), axes=(-2, -1))


def test_all_four_modalities_are_registered():
    assert set(list_corruptions("mri")) == {"kspace_motion", "ghosting", "spike", "gibbs", "bias_field", "rician_noise"}
    assert list_corruptions("ultrasound") == ["speckle"]
    assert set(list_corruptions("dermoscopy")) == {"black_corners", "ink_marks", "hair"}
    assert set(list_corruptions("histology")) == {"stain_variation", "bubbles"}
    assert all(REGISTRY.get(n).max_severity == 5 for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity_and_values_stay_in_range_without_the_final_clamp(name):
    x = image_for(name)
    assert torch.equal(apply(x, name, 0, seed=1), x)
    fn = REGISTRY.get(name).fn
    for s in range(1, 6):
        y = fn(x, s, torch.Generator().manual_seed(s))  # the function itself, not apply's clamp
        assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
        assert float(y.min()) >= 0 and float(y.max()) <= 1, (name, s)


@pytest.mark.parametrize("name", NAMES)
def test_severity_grows_monotonically_in_mean_absolute_change(name):
    """Measure: mean |out - x| over the batch, per seed, strictly increasing over levels 1-5."""
    x = image_for(name)
    for seed in range(3):
        change = [float((apply(x, name, s, seed=seed) - x).abs().mean()) for s in range(1, 6)]
        assert all(b > a for a, b in itertools.pairwise(change)), (name, seed, change)
        assert change[0] > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_under_a_seed(name):
    x = image_for(name)
    assert torch.equal(apply(x, name, 3, seed=5), apply(x, name, 3, seed=5))


# ---------------------------------------------------------------- MRI: k-space definitions
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_ghosting_spectrum_is_the_input_spectrum_with_every_nth_line_scaled(severity):
    x = phantom(32)
    n, s = mri.GHOSTING[severity - 1]
    z = mri.ghosting_image(x, severity)
    ref = np_spectrum(x)
    lines = [i for i in range(32) if i % n == 0 and i != 16]
    ref[..., lines, :] *= 1 - s
    got = np.fft.fftshift(np.fft.fft2(z.numpy().astype(np.complex128)), axes=(-2, -1))
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
    assert torch.equal(apply(x, "ghosting", severity), z.abs().clamp(max=1).float())  # magnitude, display window


def test_ghosting_agrees_with_torchio():
    tio = pytest.importorskip("torchio")
    x = phantom(32)
    for severity in (2, 5):
        n, s = mri.GHOSTING[severity - 1]
        img = tio.ScalarImage(tensor=x[:1, 0, :, :, None])  # (C, X=H, Y=W, Z=1)
        out = tio.Ghosting(num_ghosts=n, axis=0, intensity=s, restore=None)(img).data[0, ..., 0]
        assert torch.allclose(mri.ghosting_image(x, severity)[0, 0].real, out, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 4])
def test_gibbs_spectrum_outside_the_kept_disc_is_zero_and_inside_unchanged(severity):
    x = phantom(32)
    rho = mri.GIBBS[severity - 1]
    got = np.fft.fftshift(np.fft.fft2(mri.gibbs_image(x, severity).numpy().astype(np.complex128)), axes=(-2, -1))
    ref = np_spectrum(x)
    f = (np.arange(32) - 16) / 16
    keep = f[:, None] ** 2 + f[None, :] ** 2 <= rho**2
    scale = np.abs(ref).max()
    assert np.abs(got[..., ~keep]).max() / scale < 1e-6
    assert np.abs(got[..., keep] - ref[..., keep]).max() / scale < 1e-5
    assert 0.05 < keep.mean() < 0.99


def test_gibbs_agrees_with_monai_on_odd_sizes():
    """MONAI's centre is (n - 1) / 2, ours n // 2: they coincide for odd n; alpha = 1 - rho / sqrt 2."""
    from monai.transforms import GibbsNoise

    x = phantom(31)
    for severity in (1, 3, 5):
        out = GibbsNoise(alpha=1 - mri.GIBBS[severity - 1] / math.sqrt(2))(x[0])
        assert torch.allclose(mri.gibbs_image(x, severity)[0].real, torch.as_tensor(out).float(), atol=1e-5)


def test_spike_adds_one_k_space_sample_of_r_times_the_dc():
    x = phantom(32)
    severity = 3
    r, rho = mri.SPIKE[severity - 1]
    diff = np.fft.fftshift(np.fft.fft2(mri.spike_image(x, severity, torch.Generator().manual_seed(4)).numpy()
                                       .astype(np.complex128)), axes=(-2, -1)) - np_spectrum(x)
    g = torch.Generator().manual_seed(4)
    theta = torch.rand(2, generator=g).double().numpy() * 2 * math.pi
    for b in range(2):
        iy, ix = 16 + round(rho * 16 * math.sin(theta[b])), 16 + round(rho * 16 * math.cos(theta[b]))
        expect = np.zeros((32, 32), complex)
        expect[iy, ix] = r * float(x[b].double().sum())
        assert np.abs(diff[b, 0] - expect).max() < 1e-4 * abs(expect).max()


def test_spike_agrees_with_torchio():
    tio = pytest.importorskip("torchio")
    x = phantom(32)
    r, rho = mri.SPIKE[3]
    z = mri.spike_image(x, 4, torch.Generator().manual_seed(2))
    theta = float(torch.rand(2, generator=torch.Generator().manual_seed(2))[0]) * 2 * math.pi
    iy, ix = 16 + round(rho * 16 * math.sin(theta)), 16 + round(rho * 16 * math.cos(theta))
    pos = np.array([[(iy + 0.5) / 32, (ix + 0.5) / 32, 0.5]])
    out = tio.Spike(spikes_positions=pos, intensity=r)(tio.ScalarImage(tensor=x[:1, 0, :, :, None])).data[0, ..., 0]
    assert torch.allclose(z[0, 0].real, out, atol=1e-5)


def test_shift_lines_of_every_line_is_a_circular_shift():
    x = phantom(32)
    moved = torch.ones(2, 32, dtype=torch.bool)
    z = mri.from_spectrum(mri.shift_lines(mri.spectrum(x), moved, torch.tensor([2.0, -3.0]), torch.tensor([5.0, 1.0])))
    assert torch.allclose(z[0].real, torch.roll(x[0], (2, 5), (1, 2)), atol=1e-5)
    assert torch.allclose(z[1].real, torch.roll(x[1], (-3, 1), (1, 2)), atol=1e-5)
    assert float(z.imag.abs().max()) < 1e-5


def test_kspace_motion_moves_the_stated_fraction_of_lines_by_the_stated_shift():
    x = phantom(32)
    severity = 4
    shift, frac = mri.MOTION[severity - 1]
    got = np.fft.fftshift(np.fft.fft2(mri.motion_image(x, severity, torch.Generator().manual_seed(7)).numpy()
                                      .astype(np.complex128)), axes=(-2, -1))
    ref = np_spectrum(x)
    g = torch.Generator().manual_seed(7)
    theta = torch.rand(2, generator=g).double().numpy() * 2 * math.pi
    u = torch.rand(2, 32, generator=g).numpy()
    t = shift * 32 / 224
    f = np.arange(32) - 16
    for b in range(2):
        u[b, 16] = 2
        moved = np.argsort(np.argsort(u[b])) < round(frac * 32)
        ty, tx = t * math.sin(theta[b]), t * math.cos(theta[b])
        ramp = np.exp(-2j * np.pi * (f[:, None] * ty / 32 + f[None, :] * tx / 32))
        expect = np.where(moved[:, None], ref[b, 0] * ramp, ref[b, 0])
        assert moved.sum() == round(frac * 32) and not moved[16]
        assert np.abs(got[b, 0] - expect).max() < 1e-5 * np.abs(ref).max()


def test_bias_field_agrees_with_torchio_up_to_the_rescaling_to_the_maximum():
    tio = pytest.importorskip("torchio")
    x = phantom(32)
    severity = 4
    degree, c = mri.BIAS[severity - 1]
    y = apply(x, "bias_field", severity, seed=3)
    coef = c * (2 * torch.rand(2, len(mri.bias_exponents(2, 3)), generator=torch.Generator().manual_seed(3)) - 1)
    ours = dict(zip(mri.bias_exponents(2, 3), coef[0].tolist(), strict=True))
    # torchio's coefficient list runs over (i, j, k), i + j + k <= order; z terms vanish on a 2-D image
    tio_coef = [ours.get((i, j), 0.0) if k == 0 else 0.0
                for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    img = tio.ScalarImage(tensor=x[:1, 0, :, :, None])
    out = tio.BiasField(coefficients=tio_coef, order=degree)(img).data[0, ..., 0]
    assert torch.allclose(y[0, 0], out * x[0].max() / out.max(), atol=1e-5)


def test_rician_noise_is_the_magnitude_of_complex_gaussian_noise():
    x = phantom(32)
    g = torch.Generator().manual_seed(9)
    n1, n2 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    sigma = mri.RICIAN[2]
    ref = torch.sqrt((x + sigma * n1) ** 2 + (sigma * n2) ** 2).clamp(max=1)
    assert torch.allclose(apply(x, "rician_noise", 3, seed=9), ref, atol=1e-6)
    zero = torch.zeros(1, 1, 64, 64)  # background: Rayleigh with mean sigma sqrt(pi / 2)
    bg = apply(zero, "rician_noise", 5, seed=0)
    assert abs(float(bg.mean()) / (mri.RICIAN[4] * math.sqrt(math.pi / 2)) - 1) < 0.05


# ---------------------------------------------------------------- speckle
def test_speckle_gain_follows_the_gamma_law_of_mean_one_and_std_sigma():
    stats = pytest.importorskip("scipy.stats")
    for sigma in (spk.SPECKLE[0], spk.SPECKLE[-1]):
        g = spk.speckle_gain((200_000,), sigma, torch.Generator().manual_seed(0), torch.zeros(1)).double().numpy()
        assert abs(g.mean() - 1) < 0.01 and abs(g.std() / sigma - 1) < 0.02 and g.min() >= 0
        q = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
        ref = stats.gamma.ppf(q, a=1 / sigma**2, scale=sigma**2)
        assert np.abs(np.quantile(g, q) - ref).max() < 0.02, (sigma, np.quantile(g, q), ref)
    x = phantom(32)
    g = spk.speckle_gain(tuple(x.shape), spk.SPECKLE[2], torch.Generator().manual_seed(1), x)
    assert torch.equal(apply(x, "speckle", 3, seed=1), (x * g).clamp(max=1))


# ---------------------------------------------------------------- dermoscopy
def test_black_corners_blacken_outside_the_stated_circle():
    x = rgb(32)
    for severity in (1, 5):
        y = apply(x, "black_corners", severity)
        d = torch.from_numpy(np.hypot(*(np.mgrid[:32, :32] - 15.5)))
        radius = derm.CORNERS[severity - 1] * 16
        assert bool((d > radius + 0.5).any()) and float(y[:, :, d > radius + 0.5].abs().max()) == 0
        assert torch.equal(y[:, :, d < radius - 0.5], x[:, :, d < radius - 0.5])


@pytest.mark.parametrize("name,colour,opacity", [("ink_marks", derm.INK_COLOUR, derm.INK_OPACITY),
                                                 ("hair", derm.HAIR_COLOUR, derm.HAIR_OPACITY)])
def test_marks_are_alpha_composited_and_nested_over_levels(name, colour, opacity):
    x = rgb(32)
    col = torch.tensor(colour).view(1, 3, 1, 1)
    prev = None
    for severity in range(1, 6):
        y = apply(x, name, severity, seed=2)
        v = x - col  # the painted share a m, one per pixel, by least squares over the channels
        am = ((x - y) * v).sum(1, keepdim=True) / (v**2).sum(1, keepdim=True)
        assert torch.allclose(y, (1 - am) * x + am * col, atol=1e-5)
        assert float(am.min()) > -1e-5 and float(am.max()) < opacity + 1e-5
        painted = am[:, 0] > 1e-4
        if prev is not None:
            assert bool((painted | ~prev).all())  # every mark of the lower level is still there
        prev = painted


def test_curve_mask_of_a_straight_curve_has_the_stated_width():
    x = torch.zeros(1, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    m = derm.curve_mask(x, 1, 1, 4.0, gen)
    pts = torch.rand(1, 1, 3, 2, generator=torch.Generator().manual_seed(0))[0, 0] * 31
    # the painted area is about width x length of the curve (ends add half discs)
    t = torch.linspace(0, 1, 200).view(-1, 1)
    c = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t**2 * pts[2]
    length = float((c[1:] - c[:-1]).norm(dim=1).sum())
    assert abs(float(m.sum()) - (4 * length + math.pi * 4)) < 0.15 * 4 * length


# ---------------------------------------------------------------- histology
def test_hed_transform_matches_scikit_image_and_round_trips():
    color = pytest.importorskip("skimage.color")
    x = rgb(32, 1)
    c = histo.rgb_to_hed(x)
    ref = color.rgb2hed(x[0].permute(1, 2, 0).double().numpy())
    pos = ref > 1e-3  # scikit-image clips negative amounts to 0
    assert np.abs(c[0].permute(1, 2, 0).numpy()[pos] / 6 - ref[pos]).max() < 1e-6
    assert torch.allclose(histo.hed_to_rgb(c), x, atol=1e-5)


def test_stain_variation_is_tellez_hed_perturbation_with_the_seeded_draws():
    x = rgb(32)
    sigma = histo.STAIN[3]
    g = torch.Generator().manual_seed(6)
    a = 1 + sigma * (2 * torch.rand(2, 3, generator=g) - 1)
    b = sigma * (2 * torch.rand(2, 3, generator=g) - 1)
    m = np.array(histo.RGB_FROM_HED)
    od = -np.log10(np.maximum(x.double().numpy(), 1e-6))
    conc = np.einsum("bchw,cs->bshw", od, np.linalg.inv(m))
    new = a.double().numpy()[..., None, None] * conc + b.double().numpy()[..., None, None]
    ref = 10.0 ** -np.maximum(np.einsum("bshw,sc->bchw", new, m), 0)
    assert np.abs(apply(x, "stain_variation", 4, seed=6).numpy() - ref).max() < 1e-5
    with pytest.raises(InputError, match="RGB"):
        apply(phantom(16), "stain_variation", 1)


def test_bubbles_leave_pixels_far_from_every_bubble_unchanged():
    x = rgb(32)
    severity = 3
    count, radius = histo.BUBBLES[severity - 1]
    y = apply(x, "bubbles", severity, seed=8)
    centre = torch.rand(2, histo.BUBBLES[-1][0], 2, generator=torch.Generator().manual_seed(8))[:, :count] * 31
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r = radius * 32 / 224
    for b in range(2):
        d = torch.stack([torch.hypot(yy - cy, xx - cx) for cy, cx in centre[b]]).amin(0)
        far = d > r + 3.5  # beyond the soft edge and 7 rim widths (0.5 px at this size)
        assert far.any() and torch.allclose(y[b][:, far], x[b][:, far], atol=1e-6)
        assert float((y[b] - x[b])[:, d < r - 0.5].mean()) > 0  # whitened inside


# ---------------------------------------------------------------- galleries
def test_modality_gallery_writes_one_row_per_artefact(tmp_path):
    from PIL import Image

    p = modality_gallery("dermoscopy", tmp_path / "g.png", size=48)
    img = np.asarray(Image.open(p).convert("RGB"))
    h, w, _ = img.shape
    assert 0.8 < (w / 6) / (h / 3) < 1.25  # 3 rows, 6 columns (clean + 5)
    with pytest.raises(InputError):
        example_image("x-ray")


def test_mri_artefacts_run_on_volumes_and_ghosting_acts_slice_by_slice():
    """The k-space code runs over the trailing dims: (B, C, D, H, W) works; scaling lines of k_y
    commutes with the FFT along depth, so 3-D ghosting equals 2-D ghosting of every slice."""
    vol = torch.stack([phantom(16)[:, 0] * w for w in (1.0, 0.8, 0.6)], dim=1).unsqueeze(1)  # (2, 1, 3, 16, 16)
    for name in list_corruptions("mri"):
        y = REGISTRY.get(name).fn(vol, 3, torch.Generator().manual_seed(0))
        assert y.shape == vol.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert float((y - vol).abs().mean()) > 1e-4, name
    per_slice = torch.stack([mri.ghosting(vol[:, :, d], 3, None) for d in range(3)], dim=2)
    assert torch.allclose(mri.ghosting(vol, 3, None), per_slice, atol=1e-5)
