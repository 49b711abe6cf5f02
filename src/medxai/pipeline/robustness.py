"""The audit's corruption table: ``medxai.corruptions.corruption_table`` (the one ``medxai corrupt``
runs) in the report's layout: the headline metric per corruption and severity."""

from __future__ import annotations

import torch

from medxai.corruptions import corruption_table as _table
from medxai.corruptions import headline

from .data import EvalSample

__all__ = ["corruption_table", "headline"]


def corruption_table(model: torch.nn.Module, s: EvalSample, task: str, class_names: list[str],
                     names: list[str], severities: list[int], seed: int = 0,
                     clean_logits: torch.Tensor | None = None) -> dict:
    """Headline metric on clean and corrupted copies of the sample; drop = clean - corrupted
    (None for a level above a corruption's maximum); ``table``: the whole table (every metric)."""
    from medxai.explain.engine import model_batch_for

    t = _table(model, s.x, s.y, task, class_names, names, severities, seed=seed,
               batch_size=model_batch_for(s.x[:1]), clean_logits=clean_logits)  # cache-sized forwards on CPU
    head = t["headline"]
    cells = {n: [t["corruptions"][n].get(str(sev)) for sev in severities] for n in names}
    return {"metric": head, "clean": t["clean"][head], "severities": list(severities), "mean_drop": t["mean_drop"],
            "values": {n: [None if c is None else c["metrics"][head] for c in row] for n, row in cells.items()},
            "drops": {n: [None if c is None else c["drop"][head] for c in row] for n, row in cells.items()},
            "table": t}
