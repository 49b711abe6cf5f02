"""Wrappers around other explainers: NoiseTunnel (Smilkov 2017; Adebayo 2018 for VarGrad) over any
registered method, and Guided Grad-CAM (Selvaraju et al. 2017, section 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ConfigError, InputError, ModelError
from medxai.explain.api import split_kwargs
from medxai.explain.base import Attribution, TargetSpec
from medxai.explain.cam import GradCAM
from medxai.explain.engine import DEFAULT_MEMORY_BUDGET, chunk_size_for, for_chunks
from medxai.explain.gradient import GuidedBackprop
from medxai.explain.registry import REGISTRY
from medxai.models import hooks_unavailable

__all__ = ["NT_TYPES", "GuidedGradCam", "NoiseTunnel"]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@REGISTRY.register("noise_tunnel", "noisetunnel")
class NoiseTunnel(Attribution):
    """Any registered method averaged over ``n_samples`` noisy copies ``x + N(0, stdev^2)`` (captum's NoiseTunnel).

    ``NoiseTunnel(model, method="ig", nt_type="smoothgrad", stdev=0.15, n_samples=10, seed=0,
    method_kw={...})``: ``method`` is a registry name (``inner=`` is an alias, for ``explain``
    whose own ``method`` argument names the tunnel), ``method_kw`` the inner method's constructor and
    ``attribute`` keyword arguments (split by signature, as ``explain`` does).
    ``nt_type``: "smoothgrad" (mean of the maps), "smoothgrad_sq" (mean of their squares) or
    "vargrad" (population variance: mean a^2 - (mean a)^2, as captum).
    ``stdev`` is absolute, in pixel units (default 0.15 = 15 % of the [0, 1] range); noisy copies are
    not clamped. The noise is drawn on CPU from a generator seeded with ``seed``, (n, C, H, W), the
    same for every image of the batch (a map does not depend on the rest of the batch);
    ``attribute(noise=)`` injects (n, B, C, H, W) noise instead. The inner method sees the n x B
    copies in chunks of whole images (bounded by ``memory_budget`` bytes of copies), each chunk one
    call with the targets repeated. Returns the inner method's shape, (B, [T,] ...).
    """

    def __init__(self, model: nn.Module, method: str = "saliency", *, nt_type: str = "smoothgrad",
                 stdev: float = 0.15, n_samples: int = 10, seed: int = 0, method_kw: dict | None = None,
                 inner: str | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 output: str | None = None) -> None:
        name = inner or method
        cls = REGISTRY.get(name)
        if cls is NoiseTunnel:
            raise ConfigError("a noise tunnel cannot wrap itself")
        method_kw = dict(method_kw or {})
        if output is not None:  # the explained quantity is the inner method's
            method_kw.setdefault("output", output)
        init_kw, self.method_attr_kw, post = split_kwargs(cls, method_kw)
        if post:
            raise ConfigError(f"post-processing options {sorted(post)} belong to explain, not to method_kw")
        self.method = cls(model, **init_kw)
        super().__init__(model, output=self.method.output)
        if nt_type not in NT_TYPES:
            raise InputError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
        if n_samples < 1 or not stdev >= 0:
            raise InputError(f"need n_samples >= 1 and stdev >= 0, got {n_samples}, {stdev}")
        self.nt_type, self.stdev, self.n_samples, self.seed = nt_type, float(stdev), n_samples, seed
        self.needs_grad, self.needs_hooks = self.method.needs_grad, self.method.needs_hooks
        self.default_reduce = getattr(self.method, "default_reduce", "sum")
        self.memory_budget = memory_budget

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The seeded noise (n, 1, C, H, W) in x's dtype, on x's device."""
        g = torch.Generator().manual_seed(self.seed)
        eps = torch.randn((self.n_samples, 1, *x.shape[1:]), generator=g, dtype=torch.float64) * self.stdev
        return eps.to(x.device, x.dtype)

    def _explain(self, x: torch.Tensor, spec: TargetSpec, noise: torch.Tensor | None = None, **kw):
        if self.needs_hooks and (why := hooks_unavailable(self.model)):
            raise ModelError(f"{self.method.name} is unavailable for this model: {why}")
        b, n = x.shape[0], self.n_samples
        if noise is None:
            noise = self.noise(x)
        elif tuple(noise.shape) != (n, b, *x.shape[1:]):
            raise InputError(f"noise must have shape {(n, b, *x.shape[1:])}, got {tuple(noise.shape)}")
        targets = spec.without_logits(x, self.model)
        opts = self.method_attr_kw | kw
        sums: list[torch.Tensor] = []
        per = max(1, chunk_size_for(x, self.memory_budget) // b)  # noise draws per chunk (k-major copies)

        def run(k0: int, k1: int) -> None:
            xs = (x[None] + noise[k0:k1].to(x)).flatten(0, 1)
            out = self.method._explain(xs, TargetSpec(targets.repeat(k1 - k0, 1)), **opts)
            if isinstance(out, tuple):
                raise ConfigError(f"{self.method.name} returned a tuple; the noise tunnel needs maps only")
            a = out.unflatten(0, (k1 - k0, b)).double()
            sums.append(torch.stack([a.sum(0), (a * a).sum(0)]))

        for_chunks(n, per, run, what="noise draws")
        s1, s2 = torch.stack(sums).sum(0) / n
        if self.nt_type == "smoothgrad":
            out = s1
        elif self.nt_type == "smoothgrad_sq":
            out = s2
        else:
            out = s2 - s1 * s1
        return out.to(x.dtype)


@REGISTRY.register("guided_gradcam", "guided_grad_cam")
class GuidedGradCam(Attribution):
    """Guided Grad-CAM (Selvaraju et al. 2017, section 3.2): guided backprop (B, T, C, H, W) times the
    ReLU'd Grad-CAM of the same target upsampled to the input size: (B, [T,] C, H, W).

    ``layer``: as ``GradCAM`` (None: the automatic CAM layer). ``upsample_mode``: "bilinear"
    (default, align_corners=False, as medxai's CAMs) or "nearest" (captum's GuidedGradCam default;
    with it the maps equal captum's). ``explain`` reduces channels by max of |.|.
    """

    needs_hooks = True
    default_reduce = "max_abs"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *, output: str = "logit",
                 upsample_mode: str = "bilinear") -> None:
        super().__init__(model, output=output)
        if upsample_mode not in ("bilinear", "nearest"):
            raise InputError(f"upsample_mode must be 'bilinear' or 'nearest', got {upsample_mode!r}")
        self.upsample_mode = upsample_mode
        self.cam = GradCAM(model, layer, output=output, relu=True, upsample=False)
        self.guided = GuidedBackprop(model, output=output)

    def _explain(self, x: torch.Tensor, spec: TargetSpec, **kw) -> torch.Tensor:
        targets = spec.without_logits(x, self.model)
        cam = self.cam.attribute(x, targets)  # (B, T, 1, h, w)
        gb = self.guided.attribute(x, targets)  # (B, T, C, H, W)
        kw_i = {} if self.upsample_mode == "nearest" else {"align_corners": False}
        up = F.interpolate(cam.flatten(0, 1), size=x.shape[2:], mode=self.upsample_mode, **kw_i)
        return gb * up.unflatten(0, cam.shape[:2])
