"""The explainer contract shared by every method: ``Method(model, **cfg).attribute(x, target=...)``.

- ``x``: float (B, C, H, W) in [0, 1] (checked, never clamped); volumes (B, C, D, H, W) for the
  methods whose ``image_ndims`` include 5 (the gradient methods, IG, the CAMs, occlusion, LIME,
  RISE): their maps come back (B, [T,] C|1, D, H, W).
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
from medxai.errors import InputError, ModelError
from medxai.models import hooks_unavailable

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


def check_logits(logits: torch.Tensor, b: int) -> None:
    """The model must return (B, K) logits for a batch of ``b`` images."""
    if logits.ndim != 2 or logits.shape[0] != b:
        raise InputError(f"the model must return logits of shape ({b}, K), got {tuple(logits.shape)}")


def check_target_range(targets: torch.Tensor, k: int) -> None:
    """Every target index must be one of the model's ``k`` outputs."""
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= k):
        raise InputError(f"target out of range for {k} outputs: {targets.tolist()}")


def gather_scores(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """out (B, K), targets (B, T) -> (B, T)."""
    return out.gather(1, targets)


class TargetSpec:
    """What the caller asked for (target, top_k): resolved to (B, T) from clean logits if needed.

    ``resolve(logits, b)`` is the one check every method's explaining forward goes through:
    logits (B, K), targets from them (or the fixed / given ones), targets within the K outputs.
    """

    def __init__(self, target: int | torch.Tensor | list | None = None, top_k: int | None = None,
                 fixed: torch.Tensor | None = None) -> None:
        self.target, self.top_k, self.fixed = target, top_k, fixed

    @property
    def multi(self) -> bool:
        """Whether the caller asked for a target axis (``top_k`` or a (B, T) target)."""
        return self.top_k is not None or (isinstance(self.target, torch.Tensor) and self.target.ndim == 2)

    @property
    def needs_logits(self) -> bool:
        return self.fixed is None and (self.target is None or self.top_k is not None)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed.to(logits.device).long()
        return resolve_targets(logits.detach(), self.target, self.top_k)

    def resolve(self, logits: torch.Tensor, b: int) -> torch.Tensor:
        """Check the logits of a forward at a batch of ``b``, resolve the (B, T) targets from
        them and check their range."""
        check_logits(logits, b)
        targets = self(logits)
        check_target_range(targets, logits.shape[1])
        return targets

    def without_logits(self, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """Resolve with a no-grad forward at ``x`` only when the predicted class is needed."""
        if self.needs_logits:
            with torch.no_grad():
                return self(model(x))
        if self.fixed is not None:
            return self.fixed.to(x.device).long()
        # range-checked against the model's outputs by the caller's forward
        t = self.target
        if isinstance(t, torch.Tensor) and t.ndim == 2:
            return t.to(x.device).long()
        return as_targets(t, x.shape[0], x.device)[:, None]


class Attribution:
    """Base class of every explainer: the template ``attribute`` and one hook.

    ``attribute(x, target, top_k=, **kw)`` checks ``x``, runs ``_explain(x, TargetSpec(target,
    top_k), **kw)`` inside ``preserve_model`` and drops the target axis again when a single target
    per sample was asked for. The default ``_explain`` resolves the targets first (one no-grad
    forward if needed) and calls ``_attribute(x, targets (B, T), **kw)`` -> (B, T, ...); methods
    that resolve targets from their own explaining forward override ``_explain`` instead
    (``GradientAttribution``) and check it with ``TargetSpec.resolve``.
    """

    #: registry name: set by ``@REGISTRY.register`` (its first name)
    name = "base"
    #: whether the method needs gradients (perturbation methods do not)
    needs_grad = True
    #: whether the method puts forward hooks on the model's layers (CAMs, guided backprop)
    needs_hooks = False
    #: accepted input ranks: 4 = images (B, C, H, W), 5 = volumes (B, C, D, H, W)
    image_ndims: tuple[int, ...] = (4,)

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
        return TargetSpec(target, top_k).without_logits(x, self.model)

    def attribute(self, x: torch.Tensor, target: int | torch.Tensor | list | None = None, *,
                  top_k: int | None = None, **kw):
        check_images(x, ndim=self.image_ndims)
        if self.needs_hooks and (why := hooks_unavailable(self.model)):
            raise ModelError(f"{self.name} is unavailable for this model: {why}")
        spec = TargetSpec(target, top_k)
        with preserve_model(self.model):
            out = self._explain(x, spec, **kw)
        if spec.multi:
            return out
        if isinstance(out, tuple):
            return tuple(o[:, 0] for o in out)
        return out[:, 0]

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw):
        """The hook ``attribute`` calls: (B, T, ...) maps, or a tuple of such."""
        return self._attribute(x, spec.without_logits(x, self.model), **kw)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
        raise NotImplementedError
