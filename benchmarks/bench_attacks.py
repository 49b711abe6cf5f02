"""Attacks vs ART: PGD-10 L-inf on one batch, and a success-rate curve over 6 eps.

Same model (the zoo's resnet18 at 64 px, briefly trained on the synthetic cxr-pneumonia study, eval
mode; quick: small-cnn at 32 px), test images of that study,
same inputs and settings (no random start, so both sides compute the same iterates), run side by
side in one process (interleaved, warm-up, repeats, median). ART is driven through its public
API (PyTorchClassifier with clip_values (0, 1), CrossEntropyLoss; ProjectedGradientDescentPyTorch
with num_random_init=0), which includes its numpy conversions: that is what an ART user pays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._harness import row, timeit_pair
from medxai.attacks import PGD, evaluate

KIND = "attacks"
K = 2  # cxr-pneumonia: normal / pneumonia


def _data(size: int, n: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from medxai.data.synthetic import generate

    st = generate("cxr-pneumonia", n, size=size, seed=0, split=split, balanced=True)
    return torch.from_numpy(st.images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(st.labels)


def _model(quick: bool) -> tuple[nn.Module, str, int]:
    """A model briefly trained on the synthetic cxr-pneumonia study (a random model predicts one class
    for every input, which makes success curves degenerate)."""
    from medxai.models import create
    from medxai.train import fit

    name, size, n, epochs = ("small-cnn", 32, 256, 6) if quick else ("resnet18", 64, 256, 6)
    x, y = _data(size, n, "train")
    torch.manual_seed(0)
    model = create(name, K, 1)
    fit(model, [{"image": x[i], "label": y[i]} for i in range(n)], None,
        {"task": "binary", "epochs": epochs, "batch_size": 32, "lr": 3e-3, "scheduler": "cosine", "device": "cpu",
         "monitor": "train_loss", "restore_best": False})
    return model.eval(), name, size


def _art(model: nn.Module, size: int):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, size, size), nb_classes=K,
                             clip_values=(0.0, 1.0))


def run(quick: bool = False) -> dict[str, Any]:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    model, name, size = _model(quick)
    b = 16 if quick else 64
    steps = 10
    x, y = _data(size, b, "test")
    clf = _art(model, size)
    eps = 2 / 255
    alpha = 2.5 * eps / steps
    ours = PGD(model, eps, steps=steps, random_start=False)
    art = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                                          num_random_init=0, batch_size=b, verbose=False)
    xn, yn = x.numpy(), y.numpy()
    t = timeit_pair({"medxai": lambda: ours(x, y), "art": lambda: art.generate(xn, yn)},
                    repeats=2 if quick else 5, warmup=1)
    diff = float(np.abs(t["medxai"]["result"].numpy() - t["art"]["result"]).max())
    rows = [row(f"PGD-{steps} Linf eps 2/255, batch {b}, {name} {size}px", "ART ProjectedGradientDescentPyTorch",
                t["medxai"]["median_s"], t["art"]["median_s"], agreement=diff, agreement_kind="max_abs_diff",
                images=b, times_s={k: v["times_s"] for k, v in t.items()})]

    # success curve over 6 eps: medxai evaluates all eps in one call (reusing fooled samples);
    # ART runs one attack per eps
    eps_list = [e / 255 for e in (0.25, 0.5, 1, 2, 4, 8)]
    kw = dict(norm="linf", steps=steps, random_start=False, keep="last", batch_size=b)

    correct = clf.predict(xn, batch_size=b).argmax(1) == yn

    def art_curve() -> list[float]:
        out = []
        for e in eps_list:
            atk = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=e, eps_step=2.5 * e / steps, max_iter=steps,
                                                  num_random_init=0, batch_size=b, verbose=False)
            adv = atk.generate(xn, yn)
            pred = clf.predict(adv, batch_size=b).argmax(1)
            out.append(float((correct & (pred != yn)).sum() / max(correct.sum(), 1)))
        return out

    t = timeit_pair({"reuse": lambda: evaluate(model, (x, y), eps_list, **kw),
                     "independent": lambda: evaluate(model, (x, y), eps_list, reuse=False, **kw),
                     "art": art_curve}, repeats=1 if quick else 3, warmup=1 if not quick else 0)
    ref = t["art"]["result"]
    for key, label in (("independent", "one attack per eps (reuse=False)"),
                       ("reuse", "all eps in one call, fooled samples reused")):
        res = t[key]["result"]
        rows.append(row(f"success curve, 6 eps, PGD-{steps}, {b} images: {label}", "ART, one run per eps",
                        t[key]["median_s"], t["art"]["median_s"],
                        agreement=float(np.abs(np.array(res["success_rate"]) - np.array(ref)).max()),
                        agreement_kind="max_abs_diff_success_rate", images=b * len(eps_list),
                        medxai_success=res["success_rate"], art_success=ref, attacked=res["attacked"]))
    return {"kind": KIND, "rows": rows,
            "notes": "Agreement of the reused curve may be > 0 by design: a sample fooled at a smaller eps counts "
                     "as fooled at every larger eps (the example lies in the larger ball), so medxai's curve is "
                     "the running maximum per sample and never falls; ART's independent runs can."}
