"""Training objectives: how a batch becomes a loss and an optimizer step.

The loop in ``medxai.train.loop`` is one loop; everything that differs between standard,
adversarial (PGD / TRADES / fast / free) and corruption training is an ``Objective`` registered
here by name (the config's ``objective.name``). An objective gets a ``StepContext`` with the model,
optimizer, loss function and helpers, and performs the full training step for one batch
(forward, backward, optimizer step) so that schemes such as free adversarial training, which
replay a batch m times, fit without copying the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medxai._util.registry import Registry

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
    """Build a registered objective by name with its parameters (from the config)."""
    return OBJECTIVES.get(name)(**params)
