"""Freeze the first stages of a model for fine-tuning, BatchNorm statistics included.

``requires_grad=False`` alone does not freeze a BatchNorm layer: in training mode it still
updates its running mean/variance and normalises with batch statistics. So every BatchNorm
inside a frozen part is pinned to eval mode: its ``train`` method is replaced, on that instance
only, by one that always sets eval mode, so ``model.train()`` (which calls ``train`` on every
child) leaves it in eval mode. No hooks are involved. ``unfreeze`` removes the replacement,
restores ``requires_grad`` and puts the BatchNorm layers back into the model's current mode.
"""

from __future__ import annotations

import types

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medxai.errors import ConfigError

__all__ = ["freeze", "parameterised_layers", "unfreeze"]

_STATE = "_medxai_freeze_state"


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def parameterised_layers(model: nn.Module) -> list[str]:
    """Dotted names of the modules that own parameters directly (conv, BN, linear...), in order."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def _state(model: nn.Module) -> dict:
    st = model.__dict__.get(_STATE)
    if st is None:
        st = {"params": {}, "bns": []}
        model.__dict__[_STATE] = st
    return st


def freeze(model: nn.Module, until: str | int | None = None, *, layers: int | None = None) -> list[str]:
    """Freeze the first stages (``until``) or the first ``layers`` parameterised layers.

    ``until`` is exclusive: a stage name of ``model.stages`` (that stage and those after it stay
    trainable) or an int k (the first k stages are frozen). Parameters outside every stage (a
    ViT's CLS/register tokens and position embeddings) are frozen with the first stage.
    ``layers=53`` freezes the first 53 modules of ``parameterised_layers(model)`` (the pneumonia
    study's "first 53 of 92 layers" for a Keras MobileNet). Returns the frozen parameter names.
    """
    if (until is None) == (layers is None):
        raise ConfigError("freeze: give exactly one of until=STAGE and layers=N")
    modules: list[nn.Module] = []
    if until is not None:
        stages = list(getattr(model, "stages", []))
        if not stages:
            raise ConfigError(f"freeze: {type(model).__name__} has no .stages (build it with medxai.models.create)")
        if isinstance(until, bool) or not isinstance(until, (str, int)):
            raise ConfigError(f"freeze: until must be a stage name or an int, got {until!r}")
        if isinstance(until, str):
            if until not in stages:
                raise ConfigError(f"freeze: unknown stage {until!r}; stages: {stages}")
            k = stages.index(until)
        else:
            k = until
            if not 0 <= k <= len(stages):
                raise ConfigError(f"freeze: until={k} is outside 0..{len(stages)} stages")
        modules = [model.get_submodule(s) for s in stages[:k]]
        if k > 0:
            covered = {id(p) for s in stages for p in model.get_submodule(s).parameters()}
            orphans = [(n, p) for n, p in model.named_parameters() if id(p) not in covered]
        else:
            orphans = []
    else:
        names = parameterised_layers(model)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers <= len(names):
            raise ConfigError(f"freeze: layers must be an int in 0..{len(names)}, got {layers!r}")
        modules = [model.get_submodule(n) for n in names[:layers]]
        orphans = []

    st = _state(model)
    ids = {id(p) for m in modules for p in m.parameters()} | {id(p) for _, p in orphans}
    frozen = []
    for name, p in model.named_parameters():
        if id(p) in ids:
            st["params"].setdefault(name, p.requires_grad)
            p.requires_grad_(False)
            frozen.append(name)
    for m in modules:
        for bn in m.modules():
            if isinstance(bn, _BatchNorm) and "train" not in bn.__dict__:
                bn.train = types.MethodType(_eval_only, bn)
                bn.train(False)
                st["bns"].append(bn)
    return frozen


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo every ``freeze`` on ``model``: requires_grad as before, BatchNorm back to the model's mode."""
    st = model.__dict__.pop(_STATE, None)
    if st is None:
        return model
    params = dict(model.named_parameters())
    for name, flag in st["params"].items():
        if name in params:
            params[name].requires_grad_(flag)
    for bn in st["bns"]:
        bn.__dict__.pop("train", None)
        bn.train(model.training)
    return model
