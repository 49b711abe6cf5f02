"""Explanations: ``Method(model).attribute(x, target=...)`` for every method; by name via ``explain``.

Each module below defines its methods, registers them in ``REGISTRY`` and lists its public
names in ``__all__``; this package re-exports them.
"""

from __future__ import annotations

import importlib
import importlib.util

from medxai.explain.base import Attribution, preserve_model, resolve_targets, select_output
from medxai.explain.engine import perturbed_outputs
from medxai.explain.registry import REGISTRY

__all__ = ["REGISTRY", "Attribution", "perturbed_outputs", "preserve_model", "resolve_targets", "select_output"]

# gradient methods, IG, CAMs, perturbation methods, ViT attention, post-processing, plots, API
_MODULES = ("gradient", "integrated_gradients", "cam", "occlusion", "lime", "rise", "attention",
            "postprocess", "visualize", "api")

for _name in _MODULES:
    if importlib.util.find_spec(f"medxai.explain.{_name}") is None:
        continue  # a module of a method family not built yet
    _mod = importlib.import_module(f"medxai.explain.{_name}")
    for _public in getattr(_mod, "__all__", ()):
        globals()[_public] = getattr(_mod, _public)
        __all__.append(_public)
