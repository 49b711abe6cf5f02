"""``explain(model, x, method, target=None, **kw)``: any registered method by name, as one-channel
maps at the input's size (for the CLI, the pipeline and the metrics)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from medxai.errors import ConfigError
from medxai.explain.postprocess import postprocess
from medxai.explain.registry import REGISTRY

__all__ = ["explain"]

#: keyword arguments of ``explain`` that go to ``postprocess`` (``upsample_mode`` = its ``upsample``)
POSTPROCESS_KW = ("relu", "normalize", "percentile", "reduce_channels", "upsample_mode")


def _params(fn: object) -> tuple[set[str], bool]:
    try:
        sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return set(), True
    names = {n for n, p in sig.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "model", "x")}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def _init_names(cls: type) -> set[str]:
    """The constructor's keyword names; a ``**kw`` passed up adds the base classes' constructors' names."""
    names, var_kw = _params(cls.__init__)
    for base in cls.__mro__[1:] if var_kw else ():
        if "__init__" in vars(base):
            more, var_kw = _params(base.__init__)
            names |= more
            if not var_kw:
                break
    return names


def split_kwargs(cls: type, kw: dict) -> tuple[dict, dict, dict]:
    """Split ``kw`` into (constructor, attribute, postprocess) keyword arguments by signature.

    The constructor wins a name both accept (e.g. a CAM's ``relu``); ``attribute(**kw)`` methods
    are looked through to ``_compute`` / ``_attribute``. Unknown names raise ConfigError.
    """
    init_names = _init_names(cls)
    attr_names, var_kw = _params(cls.attribute)
    if var_kw:
        for inner in ("_compute", "_attribute"):
            if hasattr(cls, inner):
                more, _ = _params(getattr(cls, inner))
                attr_names |= more
    attr_names -= {"target", "targets", "spec", "top_k"}
    init_kw, attr_kw, post_kw, unknown = {}, {}, {}, []
    for k, v in kw.items():
        if k in init_names:
            init_kw[k] = v
        elif k in attr_names:
            attr_kw[k] = v
        elif k in POSTPROCESS_KW:
            post_kw[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise ConfigError(f"{cls.__name__} does not accept {unknown}; constructor: {sorted(init_names)}, "
                          f"attribute: {sorted(attr_names)}, post-processing: {list(POSTPROCESS_KW)}")
    return init_kw, attr_kw, post_kw


def explain(model: nn.Module, x: torch.Tensor, method: str, target: int | torch.Tensor | list | None = None,
            *, top_k: int | None = None, **kw) -> torch.Tensor | tuple:
    """Explain ``x`` (B, C, H, W) (or volumes (B, C, D, H, W)) in [0, 1] with the registered ``method``.

    Builds ``REGISTRY[method](model, **constructor_kw)``, calls ``attribute(x, target, top_k=,
    **attribute_kw)`` and post-processes in this order (``postprocess``): channels reduced by
    ``reduce_channels`` (default: the method's ``default_reduce``: "max_abs" for saliency, guided
    backprop and SmoothGrad mean, as Simonyan; "sum" for input x gradient, IG, SmoothGrad^2 /
    VarGrad and methods without a declared default; CAMs have one channel); ``relu`` (default
    False; CAMs apply their own); upsampling to (H, W) with ``upsample_mode`` ("bilinear",
    align_corners=False; CAMs are built with ``upsample=False`` unless given, so the mode applies
    to them too); ``normalize`` ("none" default) and ``percentile``. Keyword arguments are split
    by signature (``split_kwargs``); an unknown one raises ConfigError.

    Returns (B, 1, H, W), or (B, T, 1, H, W) with ``top_k`` or a (B, T) target (volumes: (B, [T,] 1,
    D, H, W), upsampled trilinearly); a method that
    returns a tuple (e.g. IG with ``return_convergence_delta=True``) gives (maps, *rest).
    """
    cls = REGISTRY.get(method)
    init_kw, attr_kw, post_kw = split_kwargs(cls, kw)
    init_names = _init_names(cls)
    if "upsample" in init_names and "upsample" not in init_kw:
        init_kw["upsample"] = False
    explainer = cls(model, **init_kw)
    out = explainer.attribute(x, target, top_k=top_k, **attr_kw)
    rest: tuple = ()
    if isinstance(out, tuple):
        out, rest = out[0], tuple(out[1:])
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{method!r} returned {type(out).__name__}, not a map tensor")
    sd = x.ndim - 2  # 2 for images, 3 for volumes: maps (B, [T,] C, *spatial)
    reduce = post_kw.pop("reduce_channels", getattr(explainer, "default_reduce", "sum"))
    if out.shape[-(sd + 1)] == 1:
        reduce = None
    maps = postprocess(out, reduce_channels=reduce, upsample=post_kw.pop("upsample_mode", "bilinear"),
                       size=tuple(x.shape[2:]), spatial_dims=sd, **post_kw)
    return (maps, *rest) if rest else maps
