"""Attack steps (MadryLab ``robustness/attack_steps.py`` design): one object per norm with
``random_perturb``, ``step`` and ``project``, so one PGD loop serves every norm.

All tensors are perturbations ``delta`` of shape (B, C, H, W) in pixel units; ``eps`` and
``alpha`` (the step size) are per-sample tensors broadcastable to (B, 1, 1, 1).
Definitions: ``definitions.md`` section 3 (Madry et al. 2018, "Towards deep learning models
resistant to adversarial attacks", eq. 2 and appendix).
"""

from __future__ import annotations

import torch

from medxai._util.registry import Registry

#: Norms by name ("linf", "l2"); values are step classes.
STEPS: Registry[type[AttackStep]] = Registry("attack norm")

_TINY = 1e-10  # the L2 step's guard against a zero gradient (definitions.md section 3)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of (B, ...) as (B, 1, 1, 1)."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


class AttackStep:
    """An eps-ball with its steepest-ascent step and its Euclidean projection."""

    name = "base"

    def random_perturb(self, delta_shape: torch.Size, eps: torch.Tensor, *, generator: torch.Generator | None,
                       device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def step(self, grad: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The increment of delta for an ascent step of size ``alpha`` along ``grad``."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The nearest point of the eps-ball to ``delta``."""
        raise NotImplementedError


@STEPS.register("linf")
class LinfStep(AttackStep):
    """L-infinity ball ``||delta||_inf <= eps``.

    step: ``alpha * sign(g)``; project: ``clamp(delta, -eps, eps)``; random start: uniform in the box.
    """

    name = "linf"

    def random_perturb(self, delta_shape, eps, *, generator=None, device=None, dtype=torch.float32):
        u = torch.rand(delta_shape, generator=generator, device=device, dtype=dtype)
        return (2 * u - 1) * eps

    def step(self, grad, alpha):
        return alpha * grad.sign()

    def project(self, delta, eps):
        return torch.maximum(torch.minimum(delta, eps), -eps)


@STEPS.register("l2")
class L2Step(AttackStep):
    """L2 ball ``||delta||_2 <= eps`` (norm over all C*H*W pixels of one sample).

    step: ``alpha * g / (||g||_2 + 1e-10)``; project: ``delta * min(1, eps / ||delta||_2)``;
    random start: uniform in the ball (direction ~ N(0, I) normalised, radius ``eps * U^(1/d)``).
    """

    name = "l2"

    def random_perturb(self, delta_shape, eps, *, generator=None, device=None, dtype=torch.float32):
        z = torch.randn(delta_shape, generator=generator, device=device, dtype=dtype)
        d = z[0].numel()
        u = torch.rand((delta_shape[0],) + (1,) * (len(delta_shape) - 1), generator=generator, device=device,
                       dtype=dtype)
        return z / (_flat_norm(z) + _TINY) * eps * u.pow(1.0 / d)

    def step(self, grad, alpha):
        return alpha * grad / (_flat_norm(grad) + _TINY)

    def project(self, delta, eps):
        n = _flat_norm(delta)
        factor = torch.where(n > eps, eps / n.clamp_min(_TINY), torch.ones_like(n))
        return delta * factor
