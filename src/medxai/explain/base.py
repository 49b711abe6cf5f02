"""The explainer contract shared by every method: ``Method(model, **cfg).attribute(x, target=...)``.

- ``x``: float (B, C, H, W) in [0, 1] (checked, never clamped).
- ``target``: int, (B,) tensor, None (the predicted class), or a (B, T) tensor of several targets
  per sample; ``top_k=k`` picks each sample's k most probable outputs from one forward pass.
  With a (B, T) target (or ``top_k``) the result gains a target axis: (B, T, ...).
- ``output``: what is explained: "logit" (default), "softmax" or "sigmoid" probability.
- No side effects: ``preserve_model`` restores parameters' ``requires_grad`` and ``.grad``,
  every module's train/eval mode and the hook dictionaries, also when the method raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from medxai._util.validate import as_targets, check_images
from medxai.errors import InputError

OUTPUTS = ("logit", "softmax", "sigmoid")

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def preserve_model(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with parameters frozen (input-only gradients), then restore.

    Restores each module's ``training`` flag, each parameter's ``requires_grad`` and ``.grad``
    (the same tensor object), and removes any hook added inside the block. Runs on error too.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    hooks = [(m, name, dict(getattr(m, name))) for m in model.modules() for name in _HOOK_DICTS
             if isinstance(getattr(m, name, None), dict)]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p, _, _ in params:
                p.requires_grad_(False)
        yield model
    finally:
        for m, name, before in hooks:
            d = getattr(m, name)
            for k in [k for k in d if k not in before]:
                del d[k]
        for m, training in modes:
            m.training = training
        for p, req, grad in params:
            p.requires_grad_(req)
            p.grad = grad


def select_output(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Map model logits (B, K) to the explained quantity: logit, softmax or sigmoid probability."""
    if output == "logit":
        return logits
    if output == "softmax":
        return torch.softmax(logits, dim=-1)
    if output == "sigmoid":
        return torch.sigmoid(logits)
    raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")


def resolve_targets(logits: torch.Tensor, target: int | torch.Tensor | list | None,
                    top_k: int | None = None) -> torch.Tensor:
    """Targets as a (B, T) long tensor from ``target`` or ``top_k``, given clean logits (B, K).

    None -> the predicted class (argmax, lowest index on ties); top_k -> the k largest outputs per
    sample, in descending order (stable: lower index first on ties).
    """
    b, k = logits.shape[0], logits.shape[-1]
    if top_k is not None:
        if target is not None:
            raise InputError("give either target or top_k, not both")
        if not 1 <= top_k <= k:
            raise InputError(f"top_k must be in [1, {k}], got {top_k}")
        order = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices
        return order[:, :top_k]
    if isinstance(target, torch.Tensor) and target.ndim == 2:
        if target.shape[0] != b:
            raise InputError(f"a 2-D target must have shape ({b}, T), got {tuple(target.shape)}")
        t = target.to(logits.device).long()
        if int(t.min()) < 0 or int(t.max()) >= k:
            raise InputError(f"target out of range for {k} outputs")
        return t
    default = logits.detach().argmax(dim=-1)
    return as_targets(target, b, logits.device, default=default, num_classes=k)[:, None]


def gather_scores(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """out (B, K), targets (B, T) -> (B, T)."""
    return out.gather(1, targets)


class Attribution:
    """Base class of every explainer. Subclasses implement ``_attribute(x, targets, **kw)``.

    ``_attribute`` receives validated input and a (B, T) target tensor and returns (B, T, ...).
    ``attribute`` drops the target axis again when a single target per sample was asked for.
    """

    #: registry name, set by the subclass
    name = "base"
    #: whether the method needs gradients (perturbation methods do not)
    needs_grad = True

    def __init__(self, model: nn.Module, *, output: str = "logit") -> None:
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.model = model
        self.output = output

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The explained quantity for every output, (B, K)."""
        return select_output(self.model(x), self.output)

    def targets(self, x: torch.Tensor, target: int | torch.Tensor | list | None = None,
                top_k: int | None = None) -> torch.Tensor:
        """Resolve targets (B, T) with one forward pass if needed (no gradient)."""
        needs_forward = target is None or top_k is not None
        if not needs_forward:
            b = x.shape[0]
            if isinstance(target, torch.Tensor) and target.ndim == 2:
                return target.to(x.device).long()
            return as_targets(target, b, x.device)[:, None]
        with torch.no_grad():
            logits = self.model(x)
        return resolve_targets(logits, target, top_k)

    def attribute(self, x: torch.Tensor, target: int | torch.Tensor | list | None = None, *,
                  top_k: int | None = None, **kw) -> torch.Tensor:
        check_images(x)
        multi = top_k is not None or (isinstance(target, torch.Tensor) and target.ndim == 2)
        with preserve_model(self.model):
            t = self.targets(x, target, top_k)
            out = self._attribute(x, t, **kw)
        return out if multi else out[:, 0]

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
        raise NotImplementedError
