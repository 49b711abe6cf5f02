"""Gradient maps: Saliency, Input x Gradient, SmoothGrad, Guided Backprop, Deconvnet.

All methods speak the captum contract ``Method(model, **cfg).attribute(x, target=None, top_k=None)``
and return (B, C, H, W) for one target per sample, (B, T, C, H, W) for several; volumes
(B, C, D, H, W) give (B, [T,] C, D, H, W) (nothing here depends on the spatial rank). Several targets
per sample cost ONE forward pass and T input-gradient computations (``torch.autograd.grad`` with a
retained graph), never T forwards. Targets given as None / ``top_k`` are resolved from that same
forward pass. Definitions: ``definitions.md`` section 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from medxai.errors import InputError
from medxai.explain.base import (
    Attribution,
    TargetSpec,
    select_output,
)
from medxai.explain.engine import for_chunks, model_batch_for
from medxai.explain.registry import REGISTRY

__all__ = ["Deconvnet", "GuidedBackprop", "InputXGradient", "Saliency", "SmoothGrad", "deconv_relus", "guided_relus"]

#: default bytes of autograd state (saved activations + inputs + gradients) per model call
DEFAULT_MEMORY_BUDGET = 2**30


class GradientAttribution(Attribution):
    """Base of the gradient methods: ``_compute(x, spec)`` gets a :class:`TargetSpec` so that
    a method that runs the model at ``x`` anyway resolves None / top_k from that same forward."""

    #: channel reduction ``explain`` applies to this method's maps (see ``postprocess``)
    default_reduce: str | None = "sum"
    #: run the batch in sample chunks, halved on GPU out-of-memory (``for_chunks``); methods that
    #: chunk their own model calls (IG, SmoothGrad) turn this off
    split_on_oom: bool = True
    #: images (B, C, H, W) and volumes (B, C, D, H, W): input gradients and CAMs (``cam.upsample_maps``)
    #: do not depend on the spatial rank
    image_ndims = (4, 5)

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw):
        if self.split_on_oom:
            return self._compute_in_chunks(x, spec.target, spec.top_k, **kw)
        return self._compute(x, spec, **kw)

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor, **kw):
        return self._compute(x, TargetSpec(fixed=targets), **kw)

    def _compute_in_chunks(self, x: torch.Tensor, target, top_k: int | None, **kw) -> torch.Tensor:
        """``_compute`` on the whole batch, or on sample chunks halved on GPU out-of-memory
        (samples are independent in eval mode, so the maps are the same)."""
        b = x.shape[0]
        parts: list[torch.Tensor] = []

        def run(s0: int, s1: int) -> None:
            t = target
            if isinstance(t, (list, tuple)) or (isinstance(t, torch.Tensor) and t.ndim >= 1):
                t = t[s0:s1] if len(t) == b else t
            parts.append(self._compute(x[s0:s1], TargetSpec(t, top_k), **kw))

        for_chunks(b, b, run, what="images")
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _compute(self, x: torch.Tensor, spec: TargetSpec, **kw):
        raise NotImplementedError


def target_gradients(scores: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """d scores[:, t] / d wrt for every column t of ``scores`` (N, T): (N, T, *wrt.shape[1:]).

    One backward per target through the retained graph; samples are independent (eval mode), so
    the gradient of the batch sum is each sample's own gradient.
    """

    n_t = scores.shape[1]
    grads = []
    for t in range(n_t):
        (g,) = torch.autograd.grad(scores[:, t].sum(), wrt, retain_graph=t < n_t - 1)
        grads.append(g)
    return torch.stack(grads, dim=1)


def input_gradients(model: nn.Module, x: torch.Tensor, spec: TargetSpec | torch.Tensor,
                    output: str = "logit") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward at ``x`` and T gradients: (grads (B, T, C, H, W), targets (B, T), scores (B, T))."""
    if isinstance(spec, torch.Tensor):
        spec = TargetSpec(fixed=spec)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        targets = spec.resolve(logits, x.shape[0])
        scores = select_output(logits, output).gather(1, targets)
        grads = target_gradients(scores, xg)
    return grads.to(x.dtype), targets, scores.detach()


# --------------------------------------------------------------------------- memory-bounded chunks

def saved_bytes_per_image(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes autograd saves for backward for ONE image (B=1), measured by one forward with
    ``saved_tensors_hooks`` (parameters and buffers not counted), plus input and gradient."""
    consts = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    total = 0
    seen: set[tuple[int, int]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in consts and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    xg = x1.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(xg)
    del out
    return total + 3 * x1.numel() * x1.element_size()


def peak_bytes_per_image(model: nn.Module, x1: torch.Tensor) -> int | None:
    """Measured peak bytes above the start of one forward + input-gradient backward of ONE image:
    ``torch.cuda.max_memory_allocated`` on a GPU (its peak statistics are reset), the CPU
    allocator's memory events of ``torch.profiler`` on the CPU (None when a profiler is already
    running). Unlike ``saved_bytes_per_image`` this includes the backward's transient buffers
    (on the CPU a 3-D convolution's input gradient unfolds its input: C k^3 x the output volume)."""
    xg = x1.detach().requires_grad_(True)

    def run() -> None:
        with torch.enable_grad():
            out = model(xg)
            torch.autograd.grad(out.sum(), xg)

    if x1.device.type == "cuda":
        torch.cuda.synchronize(x1.device)
        base = torch.cuda.memory_allocated(x1.device)
        torch.cuda.reset_peak_memory_stats(x1.device)
        run()
        return int(torch.cuda.max_memory_allocated(x1.device) - base)
    if x1.device.type != "cpu" or torch.autograd._profiler_enabled():
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    cur = peak = 0
    for _, nb in events:
        cur += nb
        peak = max(peak, cur)
    return peak


class _ChunkSizer:
    """Images per model call for a memory budget, probed once per (shape, dtype, device); lowered for
    good (per shape) when a chunk ran out of GPU memory (``settle``).

    Images: the budget bounds the autograd state saved per chunk (``saved_bytes_per_image``).
    Volumes (5-D input): it bounds the measured peak of a chunk (``peak_bytes_per_image``, the
    larger of the two), because a 3-D network's backward transients are several times its saved
    state (small-cnn3d at 96^3 on CPU: 108 MB peak for 34 MB saved).
    """

    def __init__(self, internal_batch_size: int | None, memory_budget: int) -> None:
        if internal_batch_size is not None and internal_batch_size < 1:
            raise InputError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        self.internal_batch_size, self.memory_budget = internal_batch_size, memory_budget
        self._cache: dict[tuple, int] = {}

    def __call__(self, model: nn.Module, x: torch.Tensor) -> int:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key in self._cache:
            return self._cache[key]
        if self.internal_batch_size is not None:
            return self.internal_batch_size
        per = saved_bytes_per_image(model, x[:1])
        if x.ndim == 5:
            per = max(per, peak_bytes_per_image(model, x[:1]) or 0)
        n = max(1, int(self.memory_budget // per))
        if x.device.type == "cpu":  # cache-sized batches run faster on CPU (engine.model_batch_for)
            n = min(n, model_batch_for(x[:1]))
        self._cache[key] = n
        return n

    def settle(self, x: torch.Tensor, used: int) -> None:
        """Remember a chunk size that ``for_chunks`` had to lower after running out of memory."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if used < self._cache.get(key, self.internal_batch_size or 2**62):
            self._cache[key] = used


# --------------------------------------------------------------------------- methods

@REGISTRY.register("saliency")
class Saliency(GradientAttribution):
    """Simonyan et al. 2014: ``|d f_c / d x|`` (absolute value by default, as captum's Saliency).

    Returns (B, C, H, W) (or (B, T, C, H, W)); ``explain`` reduces channels by max of |.| (Simonyan).
    """

    default_reduce = "max_abs"

    def __init__(self, model: nn.Module, *, output: str = "logit", absolute: bool = True) -> None:
        super().__init__(model, output=output)
        self.absolute = absolute

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        g, _, _ = input_gradients(self.model, x, spec, self.output)
        return g.abs() if self.absolute else g


@REGISTRY.register("input_x_gradient")
class InputXGradient(GradientAttribution):
    """Shrikumar et al. 2016: ``x * d f_c / d x``. (B, [T,] C, H, W); ``explain`` sums channels."""
    default_reduce = "sum"

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        g, _, _ = input_gradients(self.model, x, spec, self.output)
        return x[:, None] * g


SMOOTHGRAD_KINDS = ("mean", "squared", "vargrad")


@REGISTRY.register("smoothgrad")
class SmoothGrad(GradientAttribution):
    """Smilkov et al. 2017 over ``n_samples`` noisy copies ``x + N(0, sigma^2)``:
    ``kind="mean"`` (SmoothGrad), ``"squared"`` (SmoothGrad^2: mean of g^2), ``"vargrad"``
    (population variance of g: mean g^2 - (mean g)^2, as captum).

    sigma = ``noise_level * (max - min)`` of each sample (default 0.15, 25 samples), or the absolute
    ``sigma`` when given. The noisy copies are NOT clamped to [0, 1]: the method is defined on
    ``x + noise`` and the model receives it as is. Noise is drawn from a generator seeded with
    ``seed`` on the input's device (one (B, C, H, W) draw per copy, copy by copy), so results
    do not depend on the chunking; ``attribute(..., noise=)`` injects a given (n, B, C, H, W) noise.
    g is the signed gradient (``absolute=True``: |g|, as captum's NoiseTunnel over Saliency).
    Copies go through the model in chunks bounded by ``memory_budget`` bytes (or
    ``internal_batch_size`` images). Returns (B, [T,] C, H, W).
    """

    split_on_oom = False  # chunks its noisy copies itself

    def __init__(self, model: nn.Module, *, output: str = "logit", kind: str = "mean", n_samples: int = 25,
                 noise_level: float = 0.15, sigma: float | None = None, seed: int = 0, absolute: bool = False,
                 internal_batch_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        super().__init__(model, output=output)
        if kind not in SMOOTHGRAD_KINDS:
            raise InputError(f"kind must be one of {SMOOTHGRAD_KINDS}, got {kind!r}")
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if (sigma if sigma is not None else noise_level) < 0:
            raise InputError("sigma / noise_level must be >= 0")
        self.kind, self.n_samples, self.noise_level, self.sigma = kind, n_samples, noise_level, sigma
        self.seed, self.absolute = seed, absolute
        self._chunk = _ChunkSizer(internal_batch_size, memory_budget)

    @property
    def default_reduce(self) -> str:  # type: ignore[override]
        return "max_abs" if self.kind == "mean" else "sum"

    def sigmas(self, x: torch.Tensor) -> torch.Tensor:
        """Noise standard deviation per sample, (B,)."""
        if self.sigma is not None:
            return torch.full((x.shape[0],), float(self.sigma), device=x.device, dtype=x.dtype)
        flat = x.flatten(1)
        return self.noise_level * (flat.amax(1) - flat.amin(1))

    def _compute(self, x: torch.Tensor, spec: TargetSpec, noise: torch.Tensor | None = None) -> torch.Tensor:
        b, n = x.shape[0], self.n_samples
        if noise is not None and tuple(noise.shape) != (n, *x.shape):
            raise InputError(f"noise must have shape {(n, *x.shape)}, got {tuple(noise.shape)}")
        targets = spec.without_logits(x, self.model)
        n_t = targets.shape[1]
        sig = self.sigmas(x).view(b, *([1] * (x.ndim - 1)))
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        chunk = self._chunk(self.model, x)
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        acc = torch.zeros((b, n_t, *x.shape[1:]), device=x.device, dtype=acc_dtype)
        acc2 = torch.zeros_like(acc)
        # copies in order (k, b), k-major; each chunk holds whole copies when B <= chunk
        per = max(1, chunk // b)
        k0 = 0
        while k0 < n:
            ks = range(k0, min(k0 + per, n))
            k0 = ks.stop
            eps = torch.stack([noise[k].to(x) if noise is not None else
                               torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * sig
                               for k in ks])  # (K', B, C, H, W)
            xs = (x[None] + eps).flatten(0, 1)
            tt = targets.repeat(len(ks), 1)

            def run(s0: int, s1: int, xs: torch.Tensor = xs, tt: torch.Tensor = tt) -> None:
                g, _, _ = input_gradients(self.model, xs[s0:s1], tt[s0:s1], self.output)
                if self.absolute:
                    g = g.abs()
                g = g.to(acc.dtype)
                g2 = g**2
                idx = torch.arange(s0, s1, device=x.device) % b
                acc.index_add_(0, idx, g)
                acc2.index_add_(0, idx, g2)

            used = for_chunks(xs.shape[0], chunk, run, what="noisy copies")
            if used < chunk:
                self._chunk.settle(x, used)
                chunk, per = used, max(1, used // b)
        mean = acc / n
        if self.kind == "mean":
            out = mean
        elif self.kind == "squared":
            out = acc2 / n
        else:
            out = acc2 / n - mean**2
        return out.to(x.dtype)


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs (Springenberg 2015)."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = inp.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is ``relu(grad)``, ignoring the forward mask (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return inp.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.clamp(min=0)


@contextmanager
def _patched_relus(model: nn.Module, fn: type[torch.autograd.Function]) -> Iterator[list[nn.Module]]:
    """Within the block every ``nn.ReLU`` module's output is ``fn.apply(input)`` (a forward hook);
    hooks removed on exit, also on error."""
    handles = []

    def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor) -> torch.Tensor:
        return fn.apply(inp[0])

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        for m in relus:
            handles.append(m.register_forward_hook(hook))
        yield relus
    finally:
        for h in handles:
            h.remove()


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block every ``nn.ReLU`` module of ``model`` backpropagates like guided backprop.

    A forward hook replaces the module's output by ``_GuidedReLU`` of its input (for an inplace
    ReLU the input already holds relu(input), which gives the same mask). Hooks are removed on exit,
    also on error. Functional ReLUs (``F.relu`` inside ``forward``) are not modules and stay plain.
    """
    with _patched_relus(model, _GuidedReLU) as relus:
        yield relus


@contextmanager
def deconv_relus(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block every ``nn.ReLU`` module backpropagates ``relu(grad)`` (deconvnet rule).
    Same mechanism and restoration as :func:`guided_relus`."""
    with _patched_relus(model, _DeconvReLU) as relus:
        yield relus


@REGISTRY.register("guided_backprop")
class GuidedBackprop(GradientAttribution):
    """Springenberg et al. 2015: the input gradient with every ``nn.ReLU`` module passing only
    positive gradients (captum's GuidedBackprop semantics). (B, [T,] C, H, W), signed;
    ``explain`` reduces channels by max of |.|. Models with functional ReLUs are not guided there.
    """

    needs_hooks = True
    default_reduce = "max_abs"

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        with guided_relus(self.model) as relus:
            if not relus:
                raise InputError("GuidedBackprop needs nn.ReLU modules in the model; found none")
            g, _, _ = input_gradients(self.model, x, spec, self.output)
        return g


@REGISTRY.register("deconvnet", "deconvolution")
class Deconvnet(GradientAttribution):
    """Zeiler & Fergus 2014 (Springenberg 2015, fig. 1 "deconvnet"): the backward pass through every
    ``nn.ReLU`` module is ``relu(grad)``, whatever the forward input's sign (captum's Deconvolution).
    (B, [T,] C, H, W), signed; ``explain`` reduces channels by max of |.|. Functional ReLUs stay plain.
    """

    needs_hooks = True
    default_reduce = "max_abs"

    def _compute(self, x: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        with deconv_relus(self.model) as relus:
            if not relus:
                raise InputError("Deconvnet needs nn.ReLU modules in the model; found none")
            g, _, _ = input_gradients(self.model, x, spec, self.output)
        return g
