"""Training: one loop (``fit``) driven by objectives (standard, adversarial, corruption...)."""

from medxai.train.objectives import OBJECTIVES, Objective, StepContext, StepOutput, create_objective

__all__ = ["OBJECTIVES", "Objective", "StepContext", "StepOutput", "create_objective"]
