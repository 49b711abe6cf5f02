"""The audit's corruption table: the task's headline metric per corruption and severity."""

from __future__ import annotations

import numpy as np
import torch

from .data import EvalSample


@torch.no_grad()
def _scores(model: torch.nn.Module, x: torch.Tensor, task: str, batch: int = 256) -> np.ndarray:
    outs = [model(x[i:i + batch]) for i in range(0, len(x), batch)]
    logits = torch.cat(outs)
    probs = torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, -1)
    return probs.cpu().numpy()


def headline(task: str) -> str:
    """The task's headline metric (a key of ``classification(...)["metrics"]``)."""
    return {"multilabel": "auc_macro", "ordinal": "kappa_quadratic"}.get(task, "balanced_accuracy")


def corruption_table(model: torch.nn.Module, s: EvalSample, task: str, class_names: list[str],
                     names: list[str], severities: list[int], seed: int = 0) -> dict:
    """Metric on clean and corrupted copies of the sample; drop = clean - corrupted."""
    from medxai.corruptions import apply, max_severity
    from medxai.evaluate import classification

    metric = headline(task)
    y = s.y.cpu().numpy()

    def value(x: torch.Tensor) -> float:
        res = classification(y, _scores(model, x, task), task, class_names=class_names, n_boot=0, seed=seed)
        return float(res["metrics"][metric])

    clean = value(s.x)
    table: dict[str, list[float]] = {}
    drops: dict[str, list[float]] = {}
    for name in names:
        top = max_severity(name)  # the fundus four have 4 levels, the others 5
        vals = [value(apply(s.x, name, sev, seed=seed)) if sev <= top else None for sev in severities]
        table[name] = vals
        drops[name] = [None if v is None else clean - v for v in vals]
    all_drops = [d for row in drops.values() for d in row if d is not None]
    return {"metric": metric, "clean": clean, "values": table, "drops": drops, "severities": list(severities),
            "mean_drop": float(np.mean(all_drops)) if all_drops else None}
