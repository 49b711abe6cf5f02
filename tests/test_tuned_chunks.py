"""``explain.engine.tuned_chunks``: the CPU chunk size of gradient work chosen by timing the work itself.

The run functions below cost a known time per chunk (sleeps), so which size wins is known: a cost that
grows with the square of the chunk favours the smallest trial, a fixed cost per call the largest.
"""

from __future__ import annotations

import time

from torch import nn

from medxai.explain.engine import tuned_chunks


def _runner(cost):
    seen: list[tuple[int, int]] = []

    def run(a: int, b: int) -> None:
        time.sleep(cost(b - a))
        seen.append((a, b))

    return run, seen


def test_every_item_once_in_order_and_the_trials_are_the_first_chunks():
    run, seen = _runner(lambda n: 2e-6 * n * n)  # per item grows with the chunk: the smallest trial wins
    best = tuned_chunks(300, 64, run, model=nn.Linear(1, 1), key=("k",))
    assert [b - a for a, b in seen[:4]] == [64, 64, 32, 16]  # the cap twice (the first pays warm-up), cap/2, cap/4
    assert best == 16 and all(b - a == 16 for a, b in seen[4:-1])
    assert [a for a, _ in seen] == [0, *[b for _, b in seen[:-1]]] and seen[-1][1] == 300


def test_a_fixed_cost_per_call_keeps_the_cap_and_later_calls_reuse_the_choice():
    model = nn.Linear(1, 1)
    run, seen = _runner(lambda n: 0.004)
    assert tuned_chunks(400, 64, run, model=model, key=("k",)) == 64
    seen.clear()
    assert tuned_chunks(130, 64, run, model=model, key=("k",)) == 64  # chosen: no trials in a later call
    assert [b - a for a, b in seen] == [64, 64, 2]
    other, _ = _runner(lambda n: 2e-6 * n * n)
    assert tuned_chunks(300, 64, other, model=nn.Linear(1, 1), key=("k",)) == 16  # another model: its own trials


def test_trials_carry_over_calls_smaller_than_a_chunk():
    model = nn.Linear(1, 1)
    run, seen = _runner(lambda n: 2e-6 * n * n)
    for _ in range(4):  # 10 items a call: each call runs one trial (all of size 10), the 4th decides
        tuned_chunks(10, 64, run, model=model, key=("small",))
    assert [b - a for a, b in seen] == [10, 10, 10, 10]
    assert tuned_chunks(10, 64, run, model=model, key=("small",)) == 10
