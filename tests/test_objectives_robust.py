"""Robust objectives: each training step against an independent hand-written step, the
catastrophic-overfitting warning, frozen groups bitwise unchanged, and two learning tests on the
synthetic cxr-pneumonia study (numbers printed and in the assertion messages)."""

import functools
import time
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from medxai.errors import ConfigError
from medxai.train import OBJECTIVES, StepContext, create_objective
from medxai.train.objectives_robust import CatastrophicOverfittingWarning, _kl


def tiny(seed=0, k=3):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.0),
                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, k))
    return m.train()


def context(model, lr=0.1, task="multiclass", epoch=0, step=0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def backward_step(loss):  # what the loop does
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return StepContext(model=model, optimizer=opt, loss_fn=lambda z, y: F.cross_entropy(z, y),
                       backward_step=backward_step, autocast=nullcontext, epoch=epoch, step=step, task=task)


def manual_sgd(model, loss, lr=0.1):
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= lr * g


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def same_state(a, b, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol) for k in sa)


def test_registered_names_and_config_errors():
    assert {"standard", "adversarial", "trades", "fast", "free", "corruption"} <= set(OBJECTIVES.names())
    with pytest.raises(ConfigError, match="mix"):
        create_objective("adversarial", eps=0.1, mix=2)
    with pytest.raises(ConfigError, match="norm"):
        create_objective("fast", eps=0.1, norm="l1")
    with pytest.raises(ConfigError, match="eps"):
        create_objective("trades", eps="eight")
    with pytest.raises(ConfigError, match="known"):
        create_objective("corruption", names=["fog"])
    assert create_objective("adversarial", eps="2.5/255").eps == pytest.approx(2.5 / 255)


@pytest.mark.parametrize("mix", [1.0, 0.5])
def test_adversarial_step_equals_hand_pgd_step_and_attack_leaves_batchnorm_alone(mix):
    x, y = batch()
    model, ref = tiny(), tiny()
    obj = create_objective("adversarial", eps=0.05, steps=3, mix=mix, random_start=False)
    out = obj.train_step(context(model), x, y)
    # reference: PGD in eval mode by hand (signed steps of 2.5 eps / 3, clip to the ball and [0, 1]),
    # then training-mode forwards (adversarial first, then clean) and one SGD step
    ref.eval()
    xa = x.clone()
    for _ in range(3):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(ref(xa), y), xa)
        xa = (x + (xa.detach() - x + 2.5 * 0.05 / 3 * g.sign()).clamp(-0.05, 0.05)).clamp(0, 1)
    ref.train()
    loss = F.cross_entropy(ref(xa), y)
    if mix < 1:
        loss = (1 - mix) * F.cross_entropy(ref(x), y) + mix * loss
    manual_sgd(ref, loss)
    assert same_state(model, ref), "parameters or BatchNorm running statistics differ from the hand step"
    assert out.loss == pytest.approx(float(loss.detach()), abs=1e-6)
    assert (out.logits is None) == (mix == 1.0)
    assert all(m.training for m in model.modules())


def test_eps_warmup_is_linear_over_epochs():
    obj = create_objective("adversarial", eps=0.04, warmup_epochs=4)
    assert [obj.scale(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    x, y = batch()
    out = obj.train_step(context(tiny(), epoch=1), x, y)
    assert out.extra["eps"] == pytest.approx(0.02)


def test_fast_step_equals_fgsm_with_random_start_by_hand():
    x, y = batch(1)
    model, ref = tiny(1), tiny(1)
    torch.manual_seed(123)
    create_objective("fast", eps=0.05).train_step(context(model), x, y)
    torch.manual_seed(123)
    delta = (2 * torch.rand(x.shape) - 1) * 0.05
    x0 = (x + delta).clamp(0, 1)
    ref.eval()
    x0.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ref(x0), y), x0)
    xa = (x + (x0.detach() - x + 1.25 * 0.05 * g.sign()).clamp(-0.05, 0.05)).clamp(0, 1)
    ref.train()
    manual_sgd(ref, F.cross_entropy(ref(xa), y))
    assert same_state(model, ref)


def test_free_replays_reuse_the_training_backward_and_keep_delta():
    x, y = batch(2)
    model, ref = tiny(2), tiny(2)
    ctx = context(model)
    out = create_objective("free", eps=0.03, replays=2).train_step(ctx, x, y)
    assert out.n_updates == 2
    # replay 1: a standard step on x (delta = 0); its backward gives g; delta = clip(0.03 sign(g))
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(ref(xr), y)
    grads = torch.autograd.grad(loss, [xr, *ref.parameters()])
    with torch.no_grad():
        for p, gp in zip(ref.parameters(), grads[1:], strict=True):
            p -= 0.1 * gp
    delta = ((x + 0.03 * grads[0].sign()).clamp(0, 1) - x).clamp(-0.03, 0.03)
    # replay 2 on x + delta with the updated parameters
    xr = (x + delta).requires_grad_(True)
    loss2 = F.cross_entropy(ref(xr), y)
    grads = torch.autograd.grad(loss2, [xr, *ref.parameters()])
    with torch.no_grad():
        for p, gp in zip(ref.parameters(), grads[1:], strict=True):
            p -= 0.1 * gp
    delta = (delta + 0.03 * grads[0].sign()).clamp(-0.03, 0.03)
    assert same_state(model, ref)
    assert torch.allclose(ctx.state["free_delta"], delta, atol=1e-6)
    assert out.loss == pytest.approx((float(loss.detach()) + float(loss2.detach())) / 2, abs=1e-6)
    # the next batch starts from the kept delta (clipped to [0, 1] around the new x)
    x2, y2 = batch(3, n=5)
    create_objective("free", eps=0.03, replays=1).train_step(ctx, x2, y2)
    assert ctx.state["free_delta"].shape == x2.shape


def test_trades_kl_and_beta_zero_is_standard():
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    ref = F.kl_div(F.log_softmax(q, 1), F.log_softmax(p, 1), log_target=True, reduction="none").sum(1)
    assert torch.allclose(_kl(p, q, "multiclass"), ref, atol=1e-6)
    bern = _kl(p, q, "multilabel")
    sp, sq = torch.sigmoid(p), torch.sigmoid(q)
    hand = (sp * torch.log(sp / sq) + (1 - sp) * torch.log((1 - sp) / (1 - sq))).mean(1)
    assert torch.allclose(bern, hand, atol=1e-5)
    x, y = batch(4)
    model, ref = tiny(4), tiny(4)
    create_objective("trades", eps=0.05, beta=0.0, steps=2).train_step(context(model), x, y)
    manual_sgd(ref, F.cross_entropy(ref(x), y))
    ref(x)  # TRADES runs a second training-mode forward (on x_adv): BatchNorm counts it
    sd, sr = model.state_dict(), ref.state_dict()
    assert all(torch.allclose(sd[k].float(), sr[k].float(), atol=1e-6) for k in sd if "running" not in k)
    out = create_objective("trades", eps=0.05, beta=6.0, steps=3).train_step(context(tiny(4)), x, y)
    assert out.extra["kl"] > 0 and out.loss == pytest.approx(out.extra["clean_loss"] + 6 * out.extra["kl"], rel=1e-5)


def test_corruption_objective_p0_is_standard_and_p1_trains_on_corrupted_batch():
    from medxai.corruptions import apply

    x, y = batch(5)
    model, ref = tiny(5), tiny(5)
    create_objective("corruption", p=0.0).train_step(context(model), x, y)
    manual_sgd(ref, F.cross_entropy(ref(x), y))
    assert same_state(model, ref)
    model, ref = tiny(5), tiny(5)
    create_objective("corruption", p=1.0, names=["gamma"], levels=[2, 2]).train_step(context(model), x, y)
    manual_sgd(ref, F.cross_entropy(ref(apply(x, "gamma", 2)), y))
    assert same_state(model, ref)
    obj = create_objective("corruption", p=0.7, levels=[2, 3], names=["underexposure", "gaussian_noise"], seed=1)
    xs = torch.rand(400, 3, 8, 8)
    a, b = obj.corrupt(xs, 0, 0), obj.corrupt(xs, 0, 0)
    assert torch.equal(a, b) and not torch.equal(a, obj.corrupt(xs, 0, 1))
    changed = (a != xs).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 0.7) < 0.08
    # every changed sample equals one of the allowed (name, level) corruptions of itself
    under = {lev: apply(xs, "underexposure", lev) for lev in (2, 3)}
    is_under = torch.zeros(400, dtype=torch.bool)
    for lev in (2, 3):
        is_under |= torch.isclose(a, under[lev], atol=1e-6).flatten(1).all(1)
    assert 0.25 < float(is_under.float().mean()) < 0.45  # about half of the 70%


def test_fast_catastrophic_overfitting_warning_when_pgd_accuracy_collapses():
    lin = nn.Linear(48, 2)
    model = nn.Sequential(nn.Flatten(), lin)
    with torch.no_grad():  # epoch 1: a constant model (predicts class 0), no attack changes it
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([5.0, 0.0]))
    x = 0.5 + 0.001 * torch.rand(32, 3, 4, 4)
    y = torch.zeros(32, dtype=torch.long)
    obj = create_objective("fast", eps=0.1)
    ctx = context(model, epoch=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatastrophicOverfittingWarning)
        first = obj.on_epoch_end(ctx, (x, y))
    assert first == {"check_pgd_accuracy": 1.0, "check_fgsm_accuracy": 1.0, "catastrophic_overfitting": 0.0}
    with torch.no_grad():  # epoch 2: logit_1 = 3 sum(x) - 72.5 ~ -0.5: correct, but eps 0.1 adds 14.4
        lin.weight.copy_(torch.stack([torch.zeros(48), 3 * torch.ones(48)]))
        lin.bias.copy_(torch.tensor([0.0, -72.5]))
        assert bool((model(x).argmax(1) == 0).all())
    ctx.epoch = 1
    with pytest.warns(CatastrophicOverfittingWarning, match="catastrophic overfitting.*epoch 2"):
        second = obj.on_epoch_end(ctx, (x, y))
    assert second["check_pgd_accuracy"] == 0.0 and second["catastrophic_overfitting"] == 1.0


@pytest.mark.parametrize("objective,logged", [
    ({"name": "adversarial", "eps": "4/255", "steps": 2, "mix": 0.5}, {"eps": 4 / 255}),
    ({"name": "trades", "eps": 0.02, "steps": 2}, {}),
    ({"name": "fast", "eps": 0.02}, {"eps": 0.02}),
    ({"name": "free", "eps": 0.02, "replays": 2}, {"eps": 0.02}),
    ({"name": "corruption", "p": 1.0, "levels": [1, 2]}, {}),
])
def test_objectives_run_inside_fit(objective, logged):
    from medxai.train import fit

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.rand(3, 12, 12, generator=g), "label": torch.tensor(i % 2)} for i in range(16)]
    res = fit(tiny(0, k=2), items, items[:8], {"task": "binary", "epochs": 2, "batch_size": 8, "device": "cpu",
                                               "objective": objective})
    last = res.history[-1]
    assert np.isfinite(last["train_loss"]) and last["epoch"] == 2
    for k, v in logged.items():
        assert last[k] == pytest.approx(v)
    if objective["name"] == "fast":  # the per-epoch check ran on the validation batch
        assert last["catastrophic_overfitting"] in (0.0, 1.0) and 0.0 <= last["check_pgd_accuracy"] <= 1.0


def test_first_layer_robustification_keeps_frozen_groups_bitwise():
    from medxai.models import create, freeze
    from medxai.train import fit

    torch.manual_seed(0)
    model = create("small-cnn", 2, 1, normalize="none", width=4)
    freeze(model, until="features.block2")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.block1")}
    rest = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("classifier")}
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(1, 16, 16, generator=g), "label": torch.tensor(i % 2)} for i in range(24)]
    fit(model, items, None, {"task": "binary", "epochs": 2, "batch_size": 8, "lr": 1e-2, "device": "cpu",
                             "monitor": "train_loss", "objective": {"name": "adversarial", "eps": 0.02, "steps": 2}})
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in frozen.items())  # weights and BatchNorm statistics
    assert any(not torch.equal(sd[k], v) for k, v in rest.items())  # the rest learned


# ----------------------------------------------------------------------------- learning tests
SIZE, N_TRAIN, N_TEST, EPOCHS, EPS = 32, 400, 200, 12, 2 / 255


class _Study(torch.utils.data.Dataset):
    """medxai.data.SyntheticDataset rendered once into memory (it renders lazily per item)."""

    task = "binary"

    def __init__(self, split: str, n: int):
        from medxai.data import SyntheticDataset

        ds = SyntheticDataset("cxr-pneumonia", n, size=SIZE, seed=0, split=split, balanced=True)
        items = [ds[i] for i in range(n)]
        self.x = torch.stack([it["image"] for it in items])
        self.y = torch.stack([it["label"] for it in items]).long()
        self.labels = self.y.numpy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


@functools.lru_cache(maxsize=1)
def _data():
    return _Study("train", N_TRAIN), _Study("test", N_TEST)


@functools.lru_cache(maxsize=4)
def _trained(objective: tuple):
    from medxai.models import create
    from medxai.train import fit

    train, _ = _data()
    torch.manual_seed(0)
    model = create("small-cnn", 2, 1, normalize="none")
    t0 = time.perf_counter()
    fit(model, train, None, {"task": "binary", "epochs": EPOCHS, "batch_size": 32, "lr": 3e-3,
                             "scheduler": "cosine", "device": "cpu", "monitor": "train_loss", "restore_best": False,
                             "objective": dict(objective)})
    print(f"\n[learning] trained {dict(objective)} in {time.perf_counter() - t0:.1f} s")
    return model.eval()


def _bal_acc(model, x, y):
    with torch.no_grad():
        return balanced_accuracy_score(y.numpy(), model(x).argmax(1).numpy())


@pytest.mark.slow
def test_pgd_trained_model_is_harder_to_attack_at_its_training_eps():
    from medxai.attacks import evaluate

    _, test = _data()
    std = _trained((("name", "standard"),))
    adv = _trained((("name", "adversarial"), ("eps", EPS), ("steps", 2), ("mix", 0.5)))
    res = {}
    for name, m in (("standard", std), ("adversarial", adv)):
        ev = evaluate(m, (test.x, test.y), [0.0, EPS], steps=10, seed=0)
        res[name] = (_bal_acc(m, test.x, test.y), ev["success_rate"][1], ev["robust_accuracy"][1])
    msg = " | ".join(f"{k}: clean balanced acc {a:.3f}, PGD-10 success {s:.3f}, robust acc {r:.3f} at eps 2/255"
                     for k, (a, s, r) in res.items())
    print("\n[learning] " + msg)
    assert res["adversarial"][0] >= 0.8, msg
    assert res["adversarial"][1] < res["standard"][1], msg


@pytest.mark.slow
def test_corruption_trained_model_loses_less_accuracy_on_corrupted_data():
    from medxai.corruptions import FUNDUS_FAULTS, apply

    _, test = _data()
    std = _trained((("name", "standard"),))
    cor = _trained((("name", "corruption"), ("p", 0.5), ("levels", 4)))
    res = {}
    for name, m in (("standard", std), ("corruption", cor)):
        clean = _bal_acc(m, test.x, test.y)
        corrupted = np.mean([_bal_acc(m, apply(test.x, c, s, seed=1), test.y)
                             for c in FUNDUS_FAULTS for s in range(1, 5)])
        res[name] = (clean, float(corrupted), clean - float(corrupted))
    msg = " | ".join(f"{k}: clean {c:.3f}, mean over the four faults x levels 1-4 {m:.3f}, drop {d:.3f}"
                     for k, (c, m, d) in res.items())
    print("\n[learning] " + msg)
    assert res["corruption"][2] < res["standard"][2], msg
    assert res["corruption"][1] > res["standard"][1], msg
