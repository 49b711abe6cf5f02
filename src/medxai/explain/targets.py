"""One target policy for explanations: which class of each image a map explains.

``"pred"``: the model's top prediction (argmax, lowest index on ties), or with ``top_k`` the k
most probable outputs in descending order (N, k); ``"label"``: the image's label (single-label
data only); an int (or its string) >= 0: that class for every image. Used by ``medxai explain``,
``medxai store explain`` and the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medxai.errors import ConfigError

__all__ = ["check_target_rule", "explanation_targets"]


def check_target_rule(target: str | int) -> str | int:
    """``"pred"``, ``"label"`` or a class index >= 0 (ints given as strings are parsed); else a ConfigError."""
    if isinstance(target, bool):
        raise ConfigError(f"target must be 'pred', 'label' or a class index, got {target!r}")
    if isinstance(target, int):
        if target < 0:
            raise ConfigError(f"target class index must be >= 0, got {target}")
        return target
    if target in ("pred", "label"):
        return target
    try:
        return check_target_rule(int(target))
    except (TypeError, ValueError):
        raise ConfigError(f"target must be 'pred', 'label' or a class index, got {target!r}") from None


def _labels(labels: Sequence[Any] | torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ConfigError("target 'label' needs the labels of the images")
    out = []
    for v in labels:
        t = torch.as_tensor(v)
        if t.numel() != 1:
            raise ConfigError("target 'label' needs single-label data; use 'pred' or a class index")
        out.append(int(t.reshape(-1)[0]))
    return torch.tensor(out, dtype=torch.long)


def explanation_targets(model: nn.Module, x: torch.Tensor, rule: str | int,
                        labels: Sequence[Any] | torch.Tensor | None = None, *, top_k: int | None = None,
                        batch_size: int = 256) -> torch.Tensor:
    """(N,) long targets of ``x`` by ``rule`` (see the module), or (N, k) with ``top_k`` (``"pred"`` only).

    Predictions are taken without gradients in batches of ``batch_size``; the result is on the
    device of ``x``.
    """
    rule = check_target_rule(rule)
    if top_k is not None and rule != "pred":
        raise ConfigError(f"top_k explains the k most probable outputs; it needs target 'pred', got {rule!r}")
    if rule == "label":
        return _labels(labels).to(x.device)
    if isinstance(rule, int):
        return torch.full((x.shape[0],), rule, dtype=torch.long, device=x.device)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    if top_k is not None:
        from medxai.explain.base import resolve_targets

        return resolve_targets(logits, None, top_k)
    return logits.argmax(-1)
