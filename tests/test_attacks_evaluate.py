"""Robustness curves: eps = 0 is the clean evaluation, reuse across eps is the running OR of
independent attacks, ART's prediction-change rate, balanced variants, monotone success."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from medxai.attacks import PGD, evaluate
from medxai.errors import InputError


def small_cnn(k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                      nn.Flatten(), nn.Linear(24, k))
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 3, 8, 8))
    return m.eval()


def data(n=60, k=3, seed=0, noise=0.4):
    """Labels that agree with the model on ~60% of samples, imbalanced classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    model = small_cnn(k, seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(n, generator=g) < noise
    y[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)
    return model, x, y


def test_eps_zero_is_plain_evaluation_exactly():
    model, x, y = data()
    out = evaluate(model, (x, y), [0.0, 0.01], steps=3, batch_size=16)
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = int((pred == y).sum()) / len(y)
    assert out["clean_accuracy"] == acc and out["robust_accuracy"][0] == acc
    assert out["balanced_clean_accuracy"] == balanced_accuracy_score(y.numpy(), pred.numpy())
    assert out["balanced_robust_accuracy"][0] == out["balanced_clean_accuracy"]
    assert out["success_rate"][0] == 0.0 and out["prediction_change_rate"][0] == 0.0
    assert out["attacked"][0] == 0 and out["n"] == 60 and out["n_correct"] == int((pred == y).sum())


def test_reuse_is_running_or_of_independent_attacks_and_art_change_rate():
    from art.estimators.classification import PyTorchClassifier
    from art.utils import compute_success_array

    model, x, y = data(seed=1)
    eps_list = [0.005, 0.01, 0.02, 0.04]
    kw = dict(steps=4, random_start=False, keep="last", batch_size=64)
    indep = evaluate(model, (x, y), eps_list, reuse=False, **kw)
    reused = evaluate(model, (x, y), eps_list, **kw)
    with torch.no_grad():
        pred0 = model(x).argmax(1)
    correct = pred0 == y
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=3,
                            clip_values=(0.0, 1.0))
    wrong_any = torch.zeros(60, dtype=torch.bool)
    changed_any = torch.zeros(60, dtype=torch.bool)
    for i, eps in enumerate(eps_list):
        x_adv = PGD(model, eps, steps=4, random_start=False)(x, y)
        with torch.no_grad():
            p = model(x_adv).argmax(1)
        # independent: per-eps numbers from one attack each
        assert indep["success_rate"][i] == pytest.approx(float((correct & (p != y)).sum() / correct.sum()))
        assert indep["robust_accuracy"][i] == pytest.approx(float((p == y).float().mean()))
        art_change = compute_success_array(clf, x.numpy(), y.numpy(), x_adv.numpy(), targeted=False).mean()
        assert indep["prediction_change_rate"][i] == pytest.approx(float(art_change))
        # reuse: a sample fooled at any smaller eps counts as fooled
        wrong_any |= p != y
        changed_any |= p != pred0
        assert reused["robust_accuracy"][i] == pytest.approx(float((~wrong_any).float().mean()))
        assert reused["success_rate"][i] == pytest.approx(float((correct & wrong_any).sum() / correct.sum()))
    assert reused["attacked"][0] == 60 and reused["attacked"][-1] < 60


def test_balanced_variants_by_hand():
    model, x, y = data(n=80, seed=2, noise=0.3)
    out = evaluate(model, (x, y), [0.0, 0.03], steps=3, random_start=False, keep="last", reuse=False)
    x_adv = PGD(model, 0.03, steps=3, random_start=False)(x, y)
    with torch.no_grad():
        p0, p = model(x).argmax(1).numpy(), model(x_adv).argmax(1).numpy()
    yn = y.numpy()
    rates = [np.mean(p[(yn == c) & (p0 == yn)] != c) for c in np.unique(yn) if ((yn == c) & (p0 == yn)).any()]
    assert out["balanced_success_rate"][1] == pytest.approx(float(np.mean(rates)))
    recalls = [np.mean(p[yn == c] == c) for c in np.unique(yn)]
    assert out["balanced_robust_accuracy"][1] == pytest.approx(float(np.mean(recalls)))


@settings(max_examples=12, deadline=None)
@given(eps=st.lists(st.floats(0.0, 0.1), min_size=2, max_size=5), norm=st.sampled_from(["linf", "l2"]),
       seed=st.integers(0, 20))
def test_success_never_falls_as_eps_grows(eps, norm, seed):
    model, x, y = data(n=24, seed=seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = evaluate(model, (x, y), [0.0, *eps], norm=norm, steps=2, seed=seed)
    s, r = out["success_rate"], out["robust_accuracy"]
    assert out["eps"] == sorted(out["eps"])
    with torch.no_grad():  # eps = 0 is the clean accuracy exactly, whatever else is in the list
        clean = int((model(x).argmax(1) == y).sum()) / len(y)
    assert r[0] == out["clean_accuracy"] == clean and s[0] == 0.0
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(a <= b for a, b in itertools.pairwise(s))
    assert all(a >= b for a, b in itertools.pairwise(r))
    assert all(0.0 <= v <= 1.0 for v in s + r)


def test_dataset_items_and_limit_equal_tensors():
    model, x, y = data(n=30, seed=3)
    items = [{"image": x[i], "label": y[i], "id": f"s{i}"} for i in range(30)]
    a = evaluate(model, (x, y), [0.0, 0.02], steps=2, seed=5, batch_size=7)
    b = evaluate(model, items, [0.0, 0.02], steps=2, seed=5, batch_size=7)
    assert a["success_rate"] == b["success_rate"] and a["robust_accuracy"] == b["robust_accuracy"]
    c = evaluate(model, (x, y), [0.0], limit=10)
    with torch.no_grad():
        assert c["n"] == 10 and c["clean_accuracy"] == int((model(x[:10]).argmax(1) == y[:10]).sum()) / 10


def test_multilabel_one_label_and_all_labels():
    torch.manual_seed(4)
    lin = nn.Linear(48, 3)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(40, 3, 4, 4)
    with torch.no_grad():
        y = (model(x) > 0).float()
    y[:5, 0] = float("nan")
    y[5:8, 0] = -1.0  # uncertain: unlabelled
    y[8:12, 1] = 1 - y[8:12, 1]  # wrong clean predictions on label 1
    one = evaluate(model, (x, y), [0.0, 0.2], task="multilabel", label=0, steps=5)
    assert one["n"] == 32 and one["clean_accuracy"] == 1.0 and one["success_rate"][1] > 0
    allk = evaluate(model, (x, y), [0.0, 0.2], task="multilabel", steps=5)
    assert allk["n"] == 40 and allk["clean_accuracy"] == pytest.approx(36 / 40)
    assert 0 < allk["success_rate"][1] <= 1 and allk["robust_accuracy"][1] < allk["clean_accuracy"]


def test_apgd_auto_at_least_as_strong_as_pgd_and_errors():
    model, x, y = data(n=40, seed=5)
    pgd = evaluate(model, (x, y), [0.01, 0.02], steps=5, keep="last")
    auto = evaluate(model, (x, y), [0.01, 0.02], steps=20, attack="auto")
    assert auto["attack"] == "apgd-ce+apgd-dlr"
    assert auto["success_rate"][-1] >= pgd["success_rate"][-1]
    with pytest.raises(InputError, match="eps_list"):
        evaluate(model, (x, y), [])
    with pytest.raises(InputError, match="attack"):
        evaluate(model, (x, y), [0.1], attack="cw")
    with pytest.raises(InputError, match="class indices"):
        evaluate(model, (x, y.float()), [0.1])


@pytest.mark.parametrize("k", [2, 3])
def test_auto_attack_list_runs_on_two_and_three_class_tasks(k):
    """APGD-CE alone for 2 classes (DLR needs 3), CE + DLR from 3; at least as strong as PGD."""
    model, x, y = data(n=40, k=k, seed=6)
    auto = evaluate(model, (x, y), [0.0, 0.05, 0.2], steps=15, attack="auto", seed=0)
    assert auto["attack"] == ("apgd-ce" if k == 2 else "apgd-ce+apgd-dlr")
    pgd = evaluate(model, (x, y), [0.0, 0.05, 0.2], steps=15, seed=0)
    assert auto["robust_accuracy"][0] == pgd["robust_accuracy"][0] == auto["clean_accuracy"]
    assert all(a >= b - 1 / 40 for a, b in zip(auto["success_rate"], pgd["success_rate"], strict=True))
    assert auto["success_rate"][-1] > 0
    if k == 2:
        with pytest.raises(InputError, match="3 classes"):
            evaluate(model, (x, y), [0.02], attack="apgd-dlr")


def test_given_clean_logits_replace_the_clean_forward_and_change_nothing():
    """``clean_logits`` (the audit's shared clean forward) gives the same numbers without a clean forward."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(10, 3, 8, 8, generator=g), torch.randint(0, 3, (10,), generator=g)
    with torch.no_grad():
        logits = model(x)
    calls = []
    h = model.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        plain = evaluate(model, (x, y), [0, 2 / 255, 8 / 255], steps=3, batch_size=4, seed=0)
        n_plain, calls[:] = sum(calls), []
        shared = evaluate(model, (x, y), [0, 2 / 255, 8 / 255], steps=3, batch_size=4, seed=0, clean_logits=logits)
    finally:
        h.remove()
    assert shared == plain and sum(calls) == n_plain - 10  # one clean forward of the 10 images saved
    with pytest.raises(InputError, match="clean_logits"):
        evaluate(model, (x, y), [0, 2 / 255], steps=1, batch_size=4, clean_logits=logits[:6])
