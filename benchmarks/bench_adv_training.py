"""Adversarial training cost: per-epoch time of standard, PGD-k (k = 3, 5, 7), fast and free
training with medxai's one loop (``fit`` + objectives), as ratios to standard training and to the
ideal cost (2k + 3) / 3 (forward = 1, input-only backward = 1, full backward = 2; fast: k = 1;
free: m replays = m standard steps per batch). Peer: ART's AdversarialTrainerMadryPGD (PGD-7,
all adversarial) on the same model, data and batch size, one epoch.

Model: the zoo's resnet18 at 64 px (quick: small-cnn at 32 px), random images and labels (the cost
does not depend on them). Per-epoch time: the loop's ``time_s`` of the second epoch (the first
warms up).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import row

KIND = "adv_training"


def _setup(quick: bool):
    from medxai.models import create

    size, n, name = (32, 128, "small-cnn") if quick else (64, 512, "resnet18")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    items = [{"image": x[i], "label": y[i]} for i in range(n)]

    def model() -> nn.Module:
        torch.manual_seed(0)
        return create(name, 2, 3)

    return items, x, y, model, name, size


def _epoch_time(model_fn, items, objective: dict, batch: int) -> float:
    from medxai.train import fit

    res = fit(model_fn(), items, None, {"task": "binary", "epochs": 2, "batch_size": batch, "lr": 1e-3,
                                         "device": "cpu" if not torch.cuda.is_available() else "cuda",
                                         "monitor": "train_loss", "objective": objective})
    return float(res.history[-1]["time_s"])


def run(quick: bool = False) -> dict[str, Any]:
    items, x, y, model_fn, name, size = _setup(quick)
    batch = 32
    eps = 2 / 255
    std = _epoch_time(model_fn, items, {"name": "standard"}, batch)
    rows = [row(f"standard, {name} {size}px, {len(items)} images", "-", std, None, images=len(items),
                ratio_to_standard=1.0, ideal=1.0)]
    runs = [(f"PGD-{k} (mix 1)", {"name": "adversarial", "eps": eps, "steps": k}, (2 * k + 3) / 3) for k in (3, 5, 7)]
    runs += [("fast (FGSM-RS)", {"name": "fast", "eps": eps, "check": False}, 5 / 3),
             ("free (m = 4)", {"name": "free", "eps": eps, "replays": 4}, 4.0)]
    times: dict[str, float] = {}
    for label, obj, ideal in runs:
        t = _epoch_time(model_fn, items, obj, batch)
        times[label] = t
        rows.append(row(f"{label}, {name} {size}px", "-", t, None, images=len(items), ratio_to_standard=t / std,
                        ideal=ideal, ratio_to_ideal=(t / std) / ideal))
    # peer: ART's Madry PGD trainer, 7 steps, one epoch
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    model = model_fn()
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                            input_shape=(3, size, size), nb_classes=2, clip_values=(0.0, 1.0))
    trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=1, batch_size=batch, eps=eps, eps_step=2.5 * eps / 7,
                                         max_iter=7, num_random_init=1)
    xn, yn = x.numpy(), np.eye(2, dtype=np.float32)[y.numpy()]
    t0 = time.perf_counter()
    trainer.fit(xn, yn)
    art_t = time.perf_counter() - t0
    rows.append(row(f"PGD-7 adversarial training epoch, {name} {size}px", "ART AdversarialTrainerMadryPGD",
                    times["PGD-7 (mix 1)"], art_t, images=len(items), ratio_to_standard=art_t / std,
                    note="ART's first epoch includes its warm-up; medxai's is the loop's second epoch"))
    return {"kind": KIND, "rows": rows}
