"""Evaluation: classification metrics with bootstrap CIs, batched predictions, run evaluation."""

from medxai.evaluate.metrics import (
    ECE_BINS,
    classification,
    expected_calibration_error,
    higher_is_better,
    metric_names,
)
from medxai.evaluate.predict import collate, predict, probabilities
from medxai.evaluate.report import evaluate_model, evaluate_run, predictions_csv

__all__ = [
    "ECE_BINS",
    "classification",
    "collate",
    "evaluate_model",
    "evaluate_run",
    "expected_calibration_error",
    "higher_is_better",
    "metric_names",
    "predict",
    "predictions_csv",
    "probabilities",
]
