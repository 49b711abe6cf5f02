"""The model registry: name -> builder ``(num_classes, in_chans, normalize, **kw) -> nn.Module``.

A builder returns a module whose first child is ``normalize`` and which carries the description
set by ``medxai.models._common.set_description``. ``num_classes=0`` means no classifier: the
model returns its pooled features (``model.feature_dim`` wide), as used by ``combined:``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medxai._util.registry import Registry

Builder = Callable[..., nn.Module]

REGISTRY: Registry[Builder] = Registry("model")
