"""Training: one loop (``fit``) driven by objectives (standard, adversarial, corruption...)."""

from medxai.runs import RunInfo, load_run, read_checkpoint, save_checkpoint
from medxai.train import objectives_robust  # noqa: F401  (registers robust objectives)
from medxai.train.config import EarlyStopping, ObjectiveConfig, RunConfig, TrainConfig, load_run_config
from medxai.train.loop import NonFiniteLossError, TrainingInterrupted, TrainResult, fit
from medxai.train.losses import OrdinalHead, build_loss, masked_bce
from medxai.train.objectives import OBJECTIVES, Objective, StepContext, StepOutput, check_objective, create_objective

__all__ = [
    "OBJECTIVES",
    "EarlyStopping",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveConfig",
    "OrdinalHead",
    "RunConfig",
    "RunInfo",
    "StepContext",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "build_loss",
    "check_objective",
    "create_objective",
    "fit",
    "load_run",
    "load_run_config",
    "masked_bce",
    "read_checkpoint",
    "save_checkpoint",
]
