"""Explanations: ``Method(model).attribute(x, target=...)`` for every method; by name via ``explain``.

Each module below defines its methods, registers them in ``REGISTRY`` and lists its public
names in ``__all__``; this package re-exports them.
"""

from __future__ import annotations

from medxai.explain import (
    api,
    attention,
    cam,
    cam_family,
    deeplift,
    gradient,
    integrated_gradients,
    lime,
    lrp,
    lrp_vit,
    occlusion,
    postprocess,
    precision,
    rise,
    shap,
    visualize,
    wrappers,
)
from medxai.explain.base import Attribution, preserve_model, resolve_targets, select_output
from medxai.explain.engine import perturbed_outputs
from medxai.explain.registry import REGISTRY

__all__ = ["REGISTRY", "Attribution", "perturbed_outputs", "preserve_model", "resolve_targets", "select_output"]

# gradient methods, IG, CAMs, perturbation methods, ViT attention and LRP, post-processing, plots, API
# (the ``postprocess`` function re-exported here shadows its module's name)
for _mod in (gradient, integrated_gradients, cam, cam_family, deeplift, lrp, shap, wrappers, occlusion, lime, rise,
             attention, lrp_vit, postprocess, precision, visualize, api):
    for _public in _mod.__all__:
        globals()[_public] = getattr(_mod, _public)
        __all__.append(_public)
del _mod, _public
