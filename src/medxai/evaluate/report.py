"""Evaluate a trained run on a dataset: ``eval.json`` and ``predictions.csv``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medxai._util.io import atomic_write_json, atomic_write_text
from medxai.evaluate.metrics import classification


def _truth_cell(v: float) -> str | int:
    """A multilabel truth as written: empty for NaN, 0 / 1, or a soft target's value."""
    if math.isnan(v):
        return ""
    return int(v) if v in (0.0, 1.0) else f"{v:.7g}"  # float32 labels: 7 significant digits


def predictions_csv(ids: Sequence[str], y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                    task: str, paths: Sequence[str] | None = None) -> str:
    """CSV text: ``id, [path,] truth, true_class, pred, score_<class>...`` (multilabel: ``id, [path,]
    truth_<label>...`` with empty = NaN and soft targets as their value, ``score_<label>``). ``path``
    is written when ``paths`` is given (one per id); ``true_class`` is the truth's class name. Scores
    are written with 9 significant digits."""
    if paths is not None and len(paths) != len(ids):
        raise ValueError(f"predictions_csv: {len(paths)} paths for {len(ids)} ids")
    where = [[p] for p in paths] if paths is not None else [[] for _ in ids]
    head = ["path"] if paths is not None else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if task == "multilabel":
        w.writerow(["id", *head, *[f"truth_{c}" for c in class_names], *[f"score_{c}" for c in class_names]])
        for i, p, t, s in zip(ids, where, y_true, scores, strict=True):
            w.writerow([i, *p, *[_truth_cell(v) for v in t], *[f"{v:.9g}" for v in s]])
    else:
        w.writerow(["id", *head, "truth", "true_class", "pred", *[f"score_{c}" for c in class_names]])
        for i, p, t, s in zip(ids, where, y_true, scores, strict=True):
            name = class_names[int(t)] if 0 <= int(t) < len(class_names) else ""
            w.writerow([i, *p, int(t), name, int(np.argmax(s)), *[f"{v:.9g}" for v in s]])
    return buf.getvalue()


def _describe(data: Any) -> Any:
    """A JSON-able description of the evaluated data: its spec (a pydantic model or a string),
    else its root folder, else its type name."""
    spec = getattr(data, "spec", None)
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json")
    if isinstance(spec, (str, dict)) and spec:
        out: Any = spec
    elif getattr(data, "root", None) is not None:
        out = str(data.root)
    else:
        out = type(data).__name__
    if isinstance(out, dict) and getattr(data, "root", None) is not None:
        out = {"root": str(data.root), **out}
    return out


def evaluate_run(run_dir: str | Path, data: Any, *, out: str | Path | None = None, which: str = "best",
                 batch_size: int = 64, device: str | None = None, n_boot: int = 1000, seed: int = 0,
                 num_workers: int = 0) -> dict[str, Any]:
    """Load the run's model (``medxai.runs.load_run``), predict ``data`` and write ``eval.json``
    and ``predictions.csv`` into ``out`` (default: the run directory). Returns the eval dict."""
    from medxai.runs import load_run

    model, info = load_run(run_dir, which=which, device=device)
    result = evaluate_model(model, info, data, out=Path(out) if out is not None else Path(run_dir),
                            batch_size=batch_size, device=device, n_boot=n_boot, seed=seed, num_workers=num_workers)
    return result


def evaluate_model(model: Any, info: Any, data: Any, *, out: str | Path, batch_size: int = 64,
                   device: str | None = None, n_boot: int = 1000, seed: int = 0,
                   num_workers: int = 0) -> dict[str, Any]:
    """Predict ``data`` with a loaded model (``info``: its ``RunInfo``: task, class names, files) and
    write ``eval.json`` and ``predictions.csv`` into ``out``. Returns the eval dict."""
    from medxai.evaluate.predict import predict

    ids, y_true, scores = predict(model, data, batch_size=batch_size, device=device, task=info.task,
                                  num_workers=num_workers)
    result = classification(y_true, scores, info.task, info.class_names, n_boot=n_boot, seed=seed)
    result["run"] = str(info.run_dir)
    result["checkpoint"] = info.checkpoint.name
    result["data"] = _describe(data)
    if info.task == "binary":  # the second class in medxai's order (a card's positive class is put there)
        result["positive_class"] = info.class_names[1]
    out = Path(out)
    atomic_write_json(out / "eval.json", result)
    records = getattr(data, "records", None)
    paths = [r.rel for r in records] if records is not None and len(records) == len(ids) else None
    atomic_write_text(out / "predictions.csv", predictions_csv(ids, y_true, scores, info.class_names, info.task,
                                                               paths=paths))
    return result
