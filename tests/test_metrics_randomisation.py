"""Model parameter randomisation: similarity functions vs scipy/skimage, the sanity check on a
model-independent edge detector and on input gradients of a trained CNN, exact restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from _metrics_helpers import tiny_cnn
from medxai.metrics import METRICS, ScoreContext, model_randomisation, spearman, ssim
from medxai.metrics.randomisation import randomisable_layers


def sobel(model, x, target):
    """An 'explainer' that ignores the model: the Sobel edge magnitude of the image."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
    g = x.mean(1, keepdim=True)
    gx = F.conv2d(g, kx[None, None], padding=1)
    gy = F.conv2d(g, kx.T[None, None], padding=1)
    return (gx.square() + gy.square()).sqrt()


def input_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target[:, None]).sum()
    return torch.autograd.grad(out, x)[0]


def _task(n=64, seed=0):
    """A square on the left (class 0) or the right (class 1) of a noisy 24 x 24 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 24, 24, generator=g)
    for i in range(n):
        r = int(torch.randint(4, 16, (1,), generator=g))
        c = int(torch.randint(2, 8, (1,), generator=g)) + 12 * int(y[i])
        x[i, 0, r : r + 5, c : c + 5] = 1.0
    return x, y


@pytest.fixture(scope="module")
def trained():
    x, y = _task()
    model = tiny_cnn(channels=1, classes=2, seed=1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    return model, x[:6], y[:6]


def test_spearman_and_ssim_equal_scipy_and_skimage():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 12, 14, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.rand(4, 12, 14, generator=g, dtype=torch.float64)
    b[1] = torch.randint(0, 3, (12, 14), generator=g).double()  # ties
    want = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(spearman(a, b).numpy(), want, rtol=1e-10)
    want = [structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0) for i in range(4)]
    np.testing.assert_allclose(ssim(a, b).numpy(), want, rtol=1e-10)
    assert torch.isnan(spearman(a, torch.ones_like(a))).all()  # constant map: undefined


def test_edge_detector_fails_and_model_is_restored(trained):
    model, x, y = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    res = model_randomisation(model, sobel, x, y)
    assert res.spearman_abs.shape == (len(randomisable_layers(model)), 6)
    torch.testing.assert_close(res.spearman_abs, torch.ones_like(res.spearman_abs))
    torch.testing.assert_close(res.ssim, torch.ones_like(res.ssim))
    assert res.score() == pytest.approx(1.0) and not res.passes()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.random.get_rng_state())  # the global RNG is left alone
    d = res.to_dict()
    assert d["passes"] is False and len(d["spearman_abs"]) == len(d["layers"])


def test_gradients_of_a_trained_cnn_decorrelate(trained):
    model, x, y = trained
    before = [t.clone() for t in model.state_dict().values()]
    res = model_randomisation(model, input_gradient, x, y, order="cascading", seed=3)
    assert res.layers[0] == "7" and res.layers[-1] == "0"  # from the output layer down
    assert res.passes() and res.score() < 0.5
    assert float(res.spearman_abs[-1].mean()) < 0.5  # fully randomised
    # the unrandomised model is not one of the averaged steps (Quantus 0.6.0 includes it)
    assert res.score() == pytest.approx(float(res.spearman_abs.mean()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    again = model_randomisation(model, input_gradient, x, y, order="cascading", seed=3)
    torch.testing.assert_close(again.spearman, res.spearman, rtol=0, atol=0)  # seeded per layer
    indep = model_randomisation(model, input_gradient, x, y, order="independent", seed=3)
    # the last layer is the first step in both orders, with the same seed: same maps
    torch.testing.assert_close(indep.spearman[0], res.spearman[0], rtol=0, atol=0)


def test_cascading_vs_independent_state_and_restore_on_error(trained):
    model, x, y = trained
    original = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers = len(randomisable_layers(model))

    def changed():
        return sum(not torch.equal(v, original[k]) for k, v in model.state_dict().items() if "num_batches" not in k)

    seen = []

    def spy(model_, x_, t_):
        seen.append(changed())
        return sobel(model_, x_, t_)

    model_randomisation(model, spy, x, y, order="cascading")
    counts_casc = seen[:]
    seen.clear()
    model_randomisation(model, spy, x, y, order="independent")
    assert counts_casc[0] == 0 and seen[0] == 0  # the original explanation
    assert counts_casc[1:] == sorted(counts_casc[1:]) and counts_casc[-1] > counts_casc[1]
    assert max(seen[1:]) <= 4 and len(seen) == n_layers + 1  # one layer (weights, bias, BN stats) at a time

    calls = []

    def boom(model_, x_, t_):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("explainer failed midway")
        return sobel(model_, x_, t_)

    with pytest.raises(RuntimeError, match="midway"):
        model_randomisation(model, boom, x, y)
    assert changed() == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k  # bitwise


def test_distinct_seed_per_layer_and_by_name():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Linear(16, 16),
                                torch.nn.Linear(16, 16), torch.nn.Linear(16, 2))
    snaps = []

    def spy(m, x, t):
        snaps.append((m[2].weight.clone(), m[3].weight.clone()))
        return x[:, :1] + m(x)[:, :1, None, None]

    model_randomisation(model, spy, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), layers=["2", "3"])
    w1, w2 = snaps[-1]
    assert not torch.equal(w1, w2)  # same shape, same init, different seeds
    info = METRICS.get("model_randomisation")
    assert info.category == "randomisation" and "explainer" in info.needs


def test_with_a_registered_explainer(trained):
    model, x, y = trained
    res = model_randomisation(model, "saliency", x[:3], y[:3], layers=["7", "3"])
    assert res.spearman_abs.shape == (2, 3)
    cols = METRICS.get("model_randomisation").compute(
        ScoreContext(maps=torch.zeros(3, 24, 24), images=x[:3], targets=y[:3], model=model, explainer=input_gradient))
    assert set(cols) == {"randomisation_spearman_abs", "randomisation_ssim"}
    assert cols["randomisation_ssim"].shape == (3,)


def test_per_sample_results_do_not_depend_on_the_batch(trained):
    """In float64, so that batched and single-image convolutions cannot swap near-tied pixel ranks."""
    import copy

    model, x, y = trained
    model, x = copy.deepcopy(model).double(), x.double()
    full = model_randomisation(model, input_gradient, x, y, seed=5)
    for i in (0, 4):
        one = model_randomisation(model, input_gradient, x[i : i + 1], y[i : i + 1], seed=5)
        for name in ("spearman_abs", "spearman", "ssim"):
            torch.testing.assert_close(getattr(one, name)[:, 0], getattr(full, name)[:, i], rtol=1e-9, atol=1e-9)


def test_block_granularity_randomises_each_block_together_and_restores():
    """granularity="block": one step per block (modules grouped up to their first index); the
    cascade's last step equals the layer-by-layer cascade's last step (same modules, same seeds)."""
    from medxai.metrics import model_randomisation
    from medxai.metrics.randomisation import _block_of
    from medxai.models import create

    assert [_block_of(n) for n in ("layer2.1.conv1", "blocks.3.attn.qkv", "fc", "features.0.0")] == [
        "layer2.1", "blocks.3", "fc", "features.0"]
    torch.manual_seed(0)
    model = create("resnet8", 3, in_chans=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    by_layer = model_randomisation(model, "saliency", x, 0, seed=3)
    by_block = model_randomisation(model, "saliency", x, 0, seed=3, granularity="block")
    assert len(by_block.layers) < len(by_layer.layers)
    assert by_block.layers[0] == "fc" and "layer1.0" in by_block.layers
    torch.testing.assert_close(by_block.spearman[-1], by_layer.spearman[-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(by_block.ssim[-1], by_layer.ssim[-1], rtol=0, atol=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
