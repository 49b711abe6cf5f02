"""Training objectives: how a batch becomes a loss and an optimizer step.

The loop in ``medxai.train.loop`` is one loop; everything that differs between standard,
adversarial (PGD / TRADES / fast / free) and corruption training is an ``Objective`` registered
here by name (the config's ``objective.name``). An objective gets a ``StepContext`` with the model,
optimizer, loss function and helpers, and performs the full training step for one batch
(forward, backward, optimizer step) so that schemes such as free adversarial training, which
replay a batch m times, fit without copying the loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medxai._util.registry import Registry
from medxai.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepContext:
    """What an objective may use for one training step.

    ``loss_fn(logits, y)`` is the task's loss (masked BCE for multilabel, CE otherwise) reduced to
    a scalar. ``backward_step(loss)`` does backward (with AMP scaling if any), gradient clipping
    and ``optimizer.step()`` / ``zero_grad``. ``autocast()`` is the configured autocast context.
    ``epoch`` and ``step`` count from 0; ``state`` is a dict the objective may keep across steps
    (saved in checkpoints if it holds only tensors/numbers).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    backward_step: Callable[[torch.Tensor], None]
    autocast: Callable[[], Any]
    epoch: int
    step: int
    task: str
    state: dict = field(default_factory=dict)


@dataclass
class StepOutput:
    """loss: float for logging; logits: clean-input logits (B, K) for training metrics, or None;
    n_updates: optimizer steps taken (free AT takes m per batch); extra: more numbers to log."""

    loss: float
    logits: torch.Tensor | None
    n_updates: int = 1
    extra: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class. Subclasses implement ``train_step``; hooks are optional."""

    name = "base"

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def on_epoch_end(self, ctx: StepContext, val_batch: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
        """Called once per epoch (e.g. a catastrophic-overfitting check). Returns numbers to log."""
        return {}


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@OBJECTIVES.register("standard")
class Standard(Objective):
    """Empirical risk minimisation: loss(model(x), y)."""

    name = "standard"

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        with ctx.autocast():
            logits = ctx.model(x)
            loss = ctx.loss_fn(logits.float(), y)
        ctx.backward_step(loss)
        return StepOutput(loss=float(loss.detach()), logits=logits.detach().float())


def create_objective(name: str, **params: Any) -> Objective:
    """Build a registered objective by name with its parameters (from the config); errors name the
    key (``check_objective``)."""
    return check_objective(name, params, prefix="")


def check_objective(name: str, params: Mapping[str, Any], *, prefix: str = "train.") -> Objective:
    """Build the objective ``name`` with ``params`` (the config's other ``objective`` keys), or raise
    one ``ConfigError`` line naming the key: an unknown name, an option the objective does not take
    (``train.objective.epsilon: unknown key for objective 'adversarial' (known: eps, steps, ...)``),
    a missing required option, or a value its constructor refuses. Cheap: no data, no model."""
    where = f"{prefix}objective"
    try:
        cls = OBJECTIVES.get(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    sig = inspect.signature(cls)
    takes = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    known = [p.name for p in takes]
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in known]
        if unknown:
            listed = ", ".join(known) if known else "none: it takes no option"
            raise ConfigError(f"{where}.{unknown[0]}: unknown key for objective {name!r} (known: {listed})"
                              + (f"; also unknown: {', '.join(unknown[1:])}" if unknown[1:] else ""))
    missing = [p.name for p in takes if p.default is p.empty and p.name not in params]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required by objective {name!r} (e.g. {missing[0]}: 2/255)"
                          if missing[0] == "eps" else f"{where}.{missing[0]}: required by objective {name!r}")
    try:
        return cls(**params)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(prefix + msg if msg.startswith("objective.") else f"{where}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid options for objective {name!r} ({exc})") from None
