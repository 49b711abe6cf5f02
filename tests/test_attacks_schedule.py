"""``attacks.evaluate(schedule=...)``: the success curve as one batched attack over every (sample, eps) pair
with per-sample budgets, against the eps-by-eps sweep.

With a deterministic attack (no random start) both schedules must give the same numbers, with and
without ``reuse``: the batched one applies the sweep's rule (a sample fooled at a smaller eps stays
fooled) after attacking every pair. It makes one attack call per batch instead of one per eps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxai.attacks import evaluate
from medxai.errors import InputError

EPS = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
NUMBERS = ("success_rate", "robust_accuracy", "prediction_change_rate", "balanced_success_rate",
           "balanced_robust_accuracy")


def _case(k: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP whose margins the budgets above cross for some images; 8 images start misclassified."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, k)).eval()
    x = torch.rand(40, 1, 16, 16)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:8] = (y[:8] + 1) % k
    return net, x, y


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("reuse", [True, False])
def test_batched_equals_sequential_for_a_deterministic_attack(k, reuse):
    net, x, y = _case(k)
    a = evaluate(net, (x, y), EPS, steps=3, random_start=False, reuse=reuse, schedule="sequential")
    b = evaluate(net, (x, y), EPS, steps=3, random_start=False, reuse=reuse, schedule="batched")
    for m in NUMBERS:
        assert b[m] == a[m], m
    assert 0 < a["success_rate"][-1] < 1  # the case is not degenerate: some images fall, some stand
    # the batched call attacks every pair; the sweep with reuse skips the samples already fooled
    assert b["attacked"] == [0] + [len(y)] * (len(EPS) - 1)
    assert a["attacked"][1:] == b["attacked"][1:] if not reuse else a["attacked"][-1] < b["attacked"][-1]
    assert b["settings"]["schedule"] == "batched"


def test_batched_is_monotone_with_random_starts_and_a_list_of_attacks():
    net, x, y = _case(4)
    b = evaluate(net, (x, y), EPS, steps=3, attack="auto", schedule="batched")
    assert b["attack"] == "apgd-ce+apgd-dlr"
    assert all(u <= v for u, v in zip(b["success_rate"], b["success_rate"][1:], strict=False))
    assert b["success_rate"][0] == 0 and b["robust_accuracy"][0] == b["clean_accuracy"]


def test_one_attack_call_per_batch_instead_of_one_per_eps():
    # two copies of the model (the CPU chunk size is tuned per model, engine.tuned_chunks): the batched
    # schedule's first model call holds the cache cap of pairs (64 > 40 images: pairs of several eps)
    calls: dict[str, list[int]] = {"sequential": [], "batched": []}
    attacked = {}
    for schedule, seen in calls.items():
        net, x, y = _case(2)
        h = net.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].shape[0]))
        try:
            attacked[schedule] = sum(evaluate(net, (x, y), EPS, steps=3, schedule=schedule, batch_size=64)["attacked"])
        finally:
            h.remove()
    # the clean forward, then per attack 3 steps + 1 forward of the kept points (keep="best") per chunk
    pairs = (len(EPS) - 1) * len(y)
    assert attacked["batched"] == pairs and sum(calls["batched"]) == len(y) + 4 * pairs
    assert sum(calls["sequential"]) == len(y) + 4 * attacked["sequential"]
    assert max(calls["sequential"]) == len(y) and max(calls["batched"]) == 64


def test_auto_is_sequential_on_cpu_and_an_unknown_schedule_is_refused():
    net, x, y = _case(2)
    a = evaluate(net, (x, y), EPS[:3], steps=2, random_start=False, schedule="auto")
    s = evaluate(net, (x, y), EPS[:3], steps=2, random_start=False, schedule="sequential")
    assert a["attacked"] == s["attacked"] and a["success_rate"] == s["success_rate"]
    with pytest.raises(InputError, match="schedule must be one of"):
        evaluate(net, (x, y), EPS, schedule="together")
