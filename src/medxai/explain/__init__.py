"""Explanations: ``Method(model).attribute(x, target=...)`` for every method, by name via ``explain``."""

from medxai.explain.base import Attribution, preserve_model, resolve_targets, select_output
from medxai.explain.engine import perturbed_outputs

__all__ = ["Attribution", "perturbed_outputs", "preserve_model", "resolve_targets", "select_output"]
