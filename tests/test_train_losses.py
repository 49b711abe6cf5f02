"""Task losses: masked BCE with NaN / soft targets, weighted CE, ordinal heads, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from medxai.errors import ConfigError, InputError
from medxai.train.losses import (
    OrdinalHead,
    build_loss,
    class_weights_from_labels,
    masked_bce,
    sample_weights_from_labels,
)


def test_masked_bce_ignores_nan_and_accepts_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([[1, 0, float("nan")], [0.7, float("nan"), 0], [0, 1, 1], [float("nan")] * 3, [0.55, 0, 1]])
    loss = masked_bce(logits, y)
    # independent: sum of -[y log s + (1 - y) log(1 - s)] over the 10 labelled entries / 10
    s = torch.sigmoid(logits.detach()).double()
    v = ~torch.isnan(y)
    yy = y.double()[v]
    ref = -(yy * s[v].log() + (1 - yy) * (1 - s[v]).log()).sum() / v.sum()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[~v] == 0) and torch.all(logits.grad[v] != 0)
    # pos_weight multiplies the positive term; smoothing pulls targets to 0.5
    pw = torch.tensor([2.0, 1.0, 3.0])
    ref_pw = -(pw.double().expand(5, 3)[v] * yy * s[v].log() + (1 - yy) * (1 - s[v]).log()).sum() / v.sum()
    assert float(masked_bce(logits.detach(), y, pos_weight=pw)) == pytest.approx(float(ref_pw), rel=1e-6)
    ys = yy * 0.8 + 0.1
    ref_ls = -(ys * s[v].log() + (1 - ys) * (1 - s[v]).log()).sum() / v.sum()
    assert float(masked_bce(logits.detach(), y, label_smoothing=0.2)) == pytest.approx(float(ref_ls), rel=1e-6)
    # an all-NaN batch still backpropagates (zero loss)
    z = torch.zeros(2, 3, requires_grad=True)
    out = masked_bce(z, torch.full((2, 3), float("nan")))
    out.backward()
    assert float(out.detach()) == 0.0 and torch.all(z.grad == 0)


def test_masked_bce_refuses_uncertain_minus_one():
    with pytest.raises(InputError, match="uncertainty policy"):
        masked_bce(torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]))


def test_weighted_ce_and_class_weights_match_sklearn():
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 0, 1, 0])
    w = class_weights_from_labels(labels, "multiclass", 3)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert np.allclose(w.numpy(), ref)
    torch.manual_seed(1)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 0, 1])
    loss = build_loss("multiclass", 3, class_weights=w)(logits, y)
    lp = torch.log_softmax(logits, 1)[torch.arange(6), y]
    ref = -(w[y] * lp).sum() / w[y].sum()
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(InputError, match=r"\(B, 3\)"):
        build_loss("multiclass", 3)(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="out of range"):
        build_loss("multiclass", 3)(torch.randn(2, 3), torch.tensor([0, 3]))


def test_multilabel_pos_weight_and_sampler_weights():
    y = np.array([[1, 0], [0, np.nan], [0, 1], [0, 0.6]])
    w = class_weights_from_labels(y, "multilabel", 2).numpy()
    assert w == pytest.approx([3 / 1, (1 + 0.4) / 1.6])  # n_neg / n_pos, soft 0.6 counts 0.6 / 0.4
    sw = sample_weights_from_labels(np.array([0, 0, 0, 1]), 2).numpy()
    assert sw == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


@pytest.mark.parametrize("mode", ["cumulative", "regression"])
def test_ordinal_heads_give_normalised_log_probabilities(mode):
    torch.manual_seed(0)
    head = OrdinalHead(nn.Linear(4, 1), mode, 5)
    out = head(torch.randn(7, 4))
    assert out.shape == (7, 5)
    assert torch.allclose(torch.softmax(out, 1).sum(1), torch.ones(7), atol=1e-5)
    if mode == "cumulative":
        # log-probs already: they sum to one without renormalisation, and CDF rises with k
        assert torch.allclose(out.exp().sum(1), torch.ones(7), atol=1e-5)
        th = head.thresholds()
        assert torch.all(th[1:] > th[:-1])
        s = head.backbone(torch.zeros(1, 4))
        cdf = torch.sigmoid(th - s)
        assert torch.allclose(head(torch.zeros(1, 4)).exp()[0, 0], cdf[0, 0], atol=1e-6)
    else:  # the predicted class is the grade nearest to the score
        x = torch.randn(3, 4)
        s = head.backbone(x)
        nearest = s.detach().round().clamp(0, 4).long().squeeze(1)
        assert torch.equal(head(x).argmax(1), nearest)
    loss = build_loss("ordinal", 5)(out, torch.tensor([0, 1, 2, 3, 4, 2, 1]))
    loss.backward()
    assert head.backbone.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        OrdinalHead(nn.Linear(4, 1), "probit", 5)
