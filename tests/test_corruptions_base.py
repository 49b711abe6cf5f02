"""Corruption registry and apply: identity at 0, range/shape/dtype, determinism, PSNR falls."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from medxai.corruptions import (
    FUNDUS_FAULTS,
    MODALITIES,
    REGISTRY,
    apply,
    example_fundus,
    list_corruptions,
    max_severity,
)
from medxai.errors import ConfigError, InputError

ALL = ["brightness", "contrast", "defocus_blur", "gamma", "gaussian_blur", "gaussian_noise", "haze",
       "impulse_noise", "jpeg", "light_leakage", "motion_blur", "overexposure", "pixelate", "shot_noise",
       "underexposure"]
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "haze", "light_leakage"}


def images(size: int = 64) -> torch.Tensor:
    """The real fundus photograph and a smooth colour texture, (2, 3, size, size)."""
    g = torch.Generator().manual_seed(0)
    tex = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic",
                        align_corners=True).clamp(0, 1)
    return torch.cat([example_fundus(size), tex])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.double() - b.double()) ** 2).mean()))


def test_registry_names_and_levels():
    assert list_corruptions() == ALL
    assert {n: max_severity(n) for n in FUNDUS_FAULTS} == dict.fromkeys(FUNDUS_FAULTS, 4)
    assert all(max_severity(n) == 5 for n in ALL if n not in FUNDUS_FAULTS)
    assert all(len(REGISTRY.get(n).table) == max_severity(n) for n in ALL)
    assert list_corruptions("fundus") == ["light_leakage"]
    # the modalities' artefacts run only when asked for
    extra = sorted(set(list_corruptions(modalities=True)) - set(ALL))
    assert extra and all(REGISTRY.get(n).kind in MODALITIES for n in extra)
    assert sorted(list_corruptions(modalities=True)) == sorted(ALL + extra)


@pytest.mark.parametrize("name", ALL)
def test_psnr_falls_with_severity_and_severity_zero_is_identity(name):
    x = images(64)
    out0 = apply(x, name, 0, seed=1)
    assert torch.equal(out0, x) and out0 is not x
    values = [psnr(apply(x, name, s, seed=1), x) for s in range(1, max_severity(name) + 1)]
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert values[-1] < 35, values  # the strongest level is a visible distortion


@pytest.mark.parametrize("name", ALL)
def test_range_shape_dtype_and_determinism(name):
    x = images(48).double()
    top = max_severity(name)
    a = apply(x, name, top, seed=5)
    assert a.shape == x.shape and a.dtype == torch.float64 and a.device == x.device
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, apply(x, name, top, seed=5))
    if name in RANDOM:
        assert not torch.equal(a, apply(x, name, top, seed=6))
    gray = apply(x[:, :1].float(), name, 1, seed=0)  # one channel works too
    assert gray.shape == (2, 1, 48, 48)


def test_batch_elements_are_independent_draws_and_each_matches_alone_for_deterministic_ones():
    x = images(32)
    both = apply(x, "contrast", 3)
    assert torch.allclose(both[1:], apply(x[1:], "contrast", 3), atol=1e-7)
    noisy = apply(torch.full((2, 3, 16, 16), 0.5), "gaussian_noise", 2, seed=0)
    assert not torch.equal(noisy[0], noisy[1])


def test_bad_input_and_names():
    x = images(16)
    with pytest.raises(InputError, match="severity"):
        apply(x, "light_leakage", 5)
    with pytest.raises(InputError, match="severity"):
        apply(x, "haze", 1.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        apply(x * 3, "haze", 1)
    with pytest.raises(ConfigError, match="known"):
        apply(x, "fog", 1)
