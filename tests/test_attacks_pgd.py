"""PGD / FGSM: ART agreement (L-inf), L2 formulas on a linear model, properties, side effects."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medxai.attacks import FGSM, PGD
from medxai.errors import InputError


def small_cnn(k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(6 * 4 * 4, k))


def warm_bn(m: nn.Module) -> nn.Module:
    m.train()
    with torch.no_grad():
        m(torch.rand(32, 3, 8, 8))  # non-trivial running statistics
    return m


def art_pgd(model, x, y, eps, eps_step, steps, k):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=k,
                            clip_values=(0.0, 1.0))
    atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=eps_step, max_iter=steps,
                                          num_random_init=0, batch_size=len(x), verbose=False)
    return atk.generate(x.numpy(), y.numpy())


@pytest.mark.parametrize("eps,steps,step_size", [(8 / 255, 10, None), (0.03, 7, 0.01), (0.5, 5, 0.2)])
def test_linf_pgd_equals_art(eps, steps, step_size):
    model = warm_bn(small_cnn()).eval()
    torch.manual_seed(1)
    x = torch.rand(24, 3, 8, 8)
    x[:4] = x[:4].round()  # pixels at 0 and 1: the [0, 1] clip is active
    y = torch.randint(0, 3, (24,))
    alpha = 2.5 * eps / steps if step_size is None else step_size
    ours = PGD(model, eps, steps=steps, step_size=step_size, random_start=False)(x, y)
    ref = art_pgd(model, x, y, eps, alpha, steps, 3)
    assert np.abs(ours.numpy() - ref).max() <= 1e-6
    assert float((ours - x).abs().max()) > 0.9 * eps  # it did move


def test_fgsm_equals_art_fast_gradient_method():
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    model = small_cnn().eval()
    torch.manual_seed(2)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 3, (16,))
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=3,
                            clip_values=(0.0, 1.0))
    ref = FastGradientMethod(clf, norm=np.inf, eps=0.05, batch_size=16).generate(x.numpy(), y.numpy())
    ours = FGSM(model, 0.05)(x, y)
    assert np.abs(ours.numpy() - ref).max() <= 1e-6


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def reference_l2_pgd(w, b, x, y, eps, alpha, steps):
    """Independent float64 L2 PGD on logits = W x + b: grad_x CE = W^T (softmax - onehot)."""
    w, b, x = w.astype(np.float64), b.astype(np.float64), x.reshape(len(x), -1).astype(np.float64)
    xa = x.copy()
    for _ in range(steps):
        z = xa @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        g = p @ w
        d = xa - x + alpha * g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-10)
        n = np.linalg.norm(d, axis=1, keepdims=True)
        d = d * np.minimum(1, eps / np.maximum(n, 1e-10))
        xa = np.clip(x + d, 0, 1)
    return xa


@pytest.mark.parametrize("eps,steps", [(0.5, 5), (2.0, 10)])
def test_l2_pgd_equals_formula_on_linear_model(eps, steps):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(4, 3 * 6 * 6, generator=g) * 0.3, torch.randn(4, generator=g)
    model = Linear(w, b)
    x, y = torch.rand(10, 3, 6, 6, generator=g), torch.randint(0, 4, (10,), generator=g)
    alpha = 2.5 * eps / steps
    ours = PGD(model, eps, steps=steps, norm="l2", random_start=False)(x, y)
    ref = reference_l2_pgd(w.numpy(), b.numpy(), x.numpy(), y.numpy(), eps, alpha, steps)
    assert np.abs(ours.flatten(1).numpy() - ref).max() < 1e-5
    assert float((ours - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-5)


def test_l2_binary_linear_attack_moves_along_weight_difference():
    # two classes: the CE gradient is parallel to w1 - w0, so every step is alpha along it
    w = torch.zeros(2, 3 * 4 * 4)
    w[1, :] = torch.linspace(-1, 1, 48)
    model = Linear(w, torch.zeros(2))
    x = torch.full((1, 3, 4, 4), 0.5)
    y = torch.tensor([1])
    x_adv = PGD(model, 0.3, steps=3, step_size=0.05, norm="l2", random_start=False)(x, y)
    u = -(w[1] - w[0]) / (w[1] - w[0]).norm()
    assert torch.allclose((x_adv - x).flatten(), 0.15 * u, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0.0, 0.5), norm=st.sampled_from(["linf", "l2"]), steps=st.integers(1, 4),
       restarts=st.integers(1, 2), keep=st.sampled_from(["last", "best"]), seed=st.integers(0, 100))
def test_adversarial_examples_stay_in_ball_and_range(eps, norm, steps, restarts, keep, seed):
    model = small_cnn(seed=seed % 3).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 3, (6,), generator=g)
    if norm == "l2":
        eps = eps * 8
    x_adv = PGD(model, eps, steps=steps, norm=norm, restarts=restarts, keep=keep, seed=seed)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6


@settings(max_examples=10, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), keep=st.sampled_from(["last", "best"]), seed=st.integers(0, 50))
def test_model_mode_parameters_and_grads_unchanged(norm, keep, seed):
    model = warm_bn(small_cnn(seed=seed % 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model must stay in eval
    model[0].bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    PGD(model, 0.1, steps=3, norm=norm, keep=keep, restarts=2, seed=seed)(x, torch.zeros(5, dtype=torch.long))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm running stats


def test_model_restored_when_loss_raises():
    model = small_cnn().train()

    def bad(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        PGD(model, 0.1, steps=2, loss=bad)(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_attack_uses_eval_mode_dropout_off():
    # with dropout active the gradient would be random: in eval mode two runs agree exactly
    model = small_cnn().train()
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    a = PGD(model, 0.1, steps=3, random_start=False)(x, y)
    b = PGD(model, 0.1, steps=3, random_start=False)(x, y)
    assert torch.equal(a, b)


def test_per_sample_eps_equals_separate_runs():
    model = small_cnn().eval()
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    eps = torch.tensor([0.0, 0.02, 0.1])
    joint = PGD(model, eps, steps=4, random_start=False)(x, y)
    for i in range(3):
        alone = PGD(model, float(eps[i]), steps=4, random_start=False)(x[i:i + 1], y[i:i + 1])
        assert torch.allclose(joint[i], alone[0], atol=1e-7)
    assert torch.equal(joint[0], x[0])


def test_eps_zero_returns_input_and_seed_reproduces():
    model = small_cnn().eval()
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    assert torch.equal(PGD(model, 0.0)(x, y), x)
    a = PGD(model, 0.05, steps=2, seed=7)(x, y)
    b = PGD(model, 0.05, steps=2, seed=7)(x, y)
    c = PGD(model, 0.05, steps=2, seed=8)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_keep_best_and_restarts_never_lose_successes():
    model = small_cnn(seed=1).eval()
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    y = model(x).argmax(1)
    last = PGD(model, 0.03, steps=5, seed=0)(x, y)
    best = PGD(model, 0.03, steps=5, seed=0, keep="best")(x, y)
    multi = PGD(model, 0.03, steps=5, seed=0, keep="best", restarts=3)(x, y)
    with torch.no_grad():
        s_last, s_best, s_multi = (model(v).argmax(1) != y for v in (last, best, multi))
    assert bool((s_best >= s_last).all()) and bool((s_multi >= s_best).all())
    assert int(s_multi.sum()) >= int(s_last.sum()) > 0


def test_targeted_attack_reaches_target_and_untargeted_leaves_label():
    model = small_cnn(seed=2).eval()
    torch.manual_seed(3)
    x = torch.rand(32, 3, 8, 8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = (pred + 1) % 3
    x_t = PGD(model, 0.5, steps=20, targeted=True, random_start=False)(x, target)
    x_u = PGD(model, 0.5, steps=20, random_start=False)(x, pred)
    with torch.no_grad():
        assert float((model(x_t).argmax(1) == target).float().mean()) >= 0.9
        assert float((model(x_u).argmax(1) != pred).float().mean()) >= 0.9


def test_multilabel_bce_all_labels_and_one_label():
    torch.manual_seed(4)
    w = torch.randn(3, 48) * 0.5
    model = Linear(w, torch.zeros(3))
    x = torch.rand(8, 3, 4, 4)
    y = (model(x) > 0).float().detach()
    y[0, 1] = float("nan")  # unlabelled entries do not count
    one = PGD(model, 0.1, steps=1, step_size=0.1, loss="bce", label=2, random_start=False)(x, y)
    # one signed step on the BCE of output 2 alone: delta = 0.1 * sign(w2) * (1 if y=0 else -1) (inside the box)
    s = torch.where(y[:, 2] == 1, -1.0, 1.0).view(-1, 1)
    expect = (x.flatten(1) + 0.1 * s * w[2].sign()).clamp(0, 1)
    assert torch.allclose(one.flatten(1), expect, atol=1e-6)
    allx = PGD(model, 0.3, steps=10, loss="bce", random_start=False)(x, y)
    with torch.no_grad():
        known = ~torch.isnan(y)
        before = ((model(x) > 0).float() != y)[known].sum()
        after = ((model(allx) > 0).float() != y)[known].sum()
    assert int(before) == 0 and int(after) > 0


def test_input_validation():
    model = small_cnn().eval()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        PGD(model, 0.1)(torch.rand(2, 3, 8, 8) * 2, torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="NaN"):
        PGD(model, 0.1)(torch.full((2, 3, 8, 8), float("nan")), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="class indices"):
        PGD(model, 0.1)(torch.rand(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(InputError, match="eps"):
        PGD(model, torch.tensor([0.1, 0.2, 0.3]))(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="keep"):
        PGD(model, 0.1, keep="worst")
    from medxai.errors import ConfigError

    with pytest.raises(ConfigError, match="linf"):
        PGD(model, 0.1, norm="l1")


def test_chunked_steps_give_the_whole_batch_result():
    # samples are independent, so PGD run 2 samples per model call equals PGD on the whole batch
    # (the random start is drawn for the batch first); also for keep="best" with its logits
    from medxai.attacks import PGD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x, y = torch.rand(7, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for keep in ("last", "best"):
        whole = PGD(net, 8 / 255, steps=4, keep=keep, seed=3, batch_size=7)
        parts = PGD(net, 8 / 255, steps=4, keep=keep, seed=3, batch_size=2)
        a, b = whole(x, y), parts(x, y)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        assert (a - x).abs().max() > 1 / 255  # the attack moved the images
        if keep == "best":
            torch.testing.assert_close(parts.adv_logits, whole.adv_logits, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="batch_size"):
        PGD(net, 8 / 255, batch_size=0)
