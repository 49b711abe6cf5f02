"""Standard AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", section 4): APGD-CE, APGD-T, FAB-T and Square, run in sequence, each on the
samples still classified correctly; per sample the first attack that breaks it.

- ``FAB`` (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
  Algorithm 1), targeted: linearise ``z_t - z_y`` at the iterate, project the iterate and the
  original onto the linearised boundary within the [0, 1] box, take the biased convex combination
  (``alpha <= alpha_max``, extrapolation ``eta``), step back towards the original by ``beta`` after a success.
  The box-constrained projection is solved exactly by bisection on its monotone one-parameter form (the
  paper's sort-based solver gives the same point).
- ``Square`` (Andriushchenko et al. 2020, "Square attack: a query-efficient black-box adversarial attack via
  random search", Algorithm 1 with the sampling distributions of Algorithms 2 (Linf) and 3 (L2)): random
  search on the margin loss with square updates of side ``sqrt(p h w)``, ``p`` halving on the reference
  schedule from ``p_init = 0.8``; one window position per iteration for the batch, uniform over all
  placements (the reference never draws the last one). On volumes the squares become cubes of side
  ``round((p d h w)^(1/3))`` (our generalisation; see ``Square``).
- ``AutoAttack(model, eps, norm)``: the ensemble. The targeted DLR loss of APGD-T uses the 3rd and 4th largest
  logits, so it needs K >= 4 classes; for K = 2 and 3 APGD-T runs on the targeted margin ``z_t - z_y``
  instead (recorded as "apgd-t(margin)" in ``attacks_ran``). FAB-T and Square need no such change.

Images (B, C, H, W) or volumes (B, C, D, H, W) (norms over all C*H*W or C*D*H*W values; Square's windows become
cubes, see ``Square``). Budgets in pixel units of [0, 1] images, a float or a (B,) tensor; every output lies in
[0, 1] and in the eps-ball. Model in eval mode with input-only gradients during the attack, restored afterwards.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medxai._util.validate import check_images
from medxai.attacks.apgd import APGD, APGDT
from medxai.attacks.budget import check_budget
from medxai.attacks.minnorm import _labels, _margin, perturbation_norm
from medxai.attacks.pgd import _clean_logits, attack_mode, per_sample
from medxai.errors import ConfigError

__all__ = ["FAB", "STANDARD", "AutoAttack", "AutoAttackResult", "Square", "project_to_hyperplane_box"]

NORMS = ("linf", "l2")
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")


def project_to_hyperplane_box(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str,
                              iters: int = 60) -> torch.Tensor:
    """The smallest ``d`` (B, D) in ``norm`` with ``w . d = c`` and ``0 <= p + d <= 1`` (FAB eq. 5-6 with the box).

    For Linf ``d(t) = clamp(t sign(c w), -p, 1 - p)``, for L2 ``d(t) = clamp(t sign(c) w, -p, 1 - p)``; ``w . d(t)``
    grows monotonically in t, so bisection finds the t that meets the plane. Where the box cannot reach the
    plane, the point of the box closest to it along that path (t at saturation) is returned.
    """
    lo, hi = -p, 1 - p
    s = torch.where(c >= 0, 1.0, -1.0).view(-1, 1).to(w)
    ws = w * s
    target = c.abs().view(-1, 1)
    if norm == "linf":
        step = ws.sign()
        t_lo = target / (ws.abs().sum(1, keepdim=True) + 1e-30)
        t_hi = torch.ones_like(t_lo)
    else:
        step = ws
        t_lo = (target / (ws.pow(2).sum(1, keepdim=True) + 1e-30)).clamp_min(1e-30)
        reach = torch.maximum(hi, -lo) / ws.abs().clamp_min(1e-30)
        t_hi = torch.where(ws != 0, reach, torch.zeros_like(reach)).amax(1, keepdim=True).clamp(1e-30, 1e30)

    def d(t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(t * step, lo), hi)

    t_lo = torch.minimum(t_lo, t_hi)
    for _ in range(iters):
        mid = (t_lo + t_hi) / 2 if norm == "linf" else (t_lo * t_hi).sqrt()
        short = (ws * d(mid)).sum(1, keepdim=True) < target
        t_lo, t_hi = torch.where(short, mid, t_lo), torch.where(short, t_hi, mid)
    return d(t_hi)


class FAB:
    """FAB-T: targeted fast adaptive boundary attack; minimal-norm examples, counted within ``eps``.

    Targets are the 2nd, 3rd, ... largest clean logits (``n_targets``, capped at K - 1); each runs ``steps``
    iterations from ``x`` on the samples not yet broken. ``min_norm(x, y, target)`` returns the smallest
    example found and its norm (inf where none); ``perturb`` keeps those within eps.
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "linf", steps: int = 100,
                 n_targets: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> None:
        _check_norm(norm)
        self.model, self.eps, self.norm, self.steps, self.n_targets = model, eps, norm, int(steps), int(n_targets)
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.perturb(x, y, logits)

    def _linearise(self, x1: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = x1.detach().requires_grad_(True)
        z = self.model(x1)
        df = z.gather(1, t.view(-1, 1)).view(-1) - z.gather(1, y.view(-1, 1)).view(-1)
        (dg,) = torch.autograd.grad(df.sum(), x1)
        return df.detach().float(), dg.detach().flatten(1).float()

    def min_norm(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(smallest example (B, C, [D,] H, W), its norm (B,), inf where none) of one targeted FAB run from x."""
        b = x.shape[0]
        x0 = x.detach().flatten(1).float()
        x1 = x0.clone()
        best, best_n = x.detach().clone(), torch.full((b,), float("inf"), device=x.device)
        with attack_mode(self.model):
            for _ in range(self.steps):
                df, dg = self._linearise(x1.view_as(x).to(x.dtype), y, target)
                # the linearised boundary: df + dg . (z - x1) = 0, from x1 (d1) and from the original x0 (d2)
                c1, c2 = -df, -df - (dg * (x0 - x1)).sum(1)
                d3 = project_to_hyperplane_box(torch.cat([x1, x0]), torch.cat([dg, dg]), torch.cat([c1, c2]),
                                               self.norm)
                d1, d2 = d3[:b], d3[b:]
                a = perturbation_norm(d3, self.norm).clamp_min(1e-8)
                alpha = (a[:b] / (a[:b] + a[b:])).clamp(0, self.alpha_max).view(-1, 1)
                x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha).clamp(0, 1)
                with torch.no_grad():
                    adv = self.model(x1.view_as(x).to(x.dtype)).argmax(1) != y
                n = perturbation_norm(x1 - x0, self.norm)
                better = adv & (n < best_n)
                best[better], best_n[better] = x1[better].view_as(x[better]).to(x.dtype), n[better]
                x1 = torch.where(adv.view(-1, 1), x0 + (x1 - x0) * self.beta, x1)
        return best, best_n

    def perturb(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Examples (B, C, [D,] H, W) in [0, 1] within eps where FAB-T found one, else ``x``; ``logits``: (B, K)
        clean logits of ``x`` when the caller has them (no clean forward)."""
        check_images(x, "x", ndim=(4, 5))
        y = _labels(x, y)
        eps = per_sample(self.eps, x.shape[0], x, "eps").view(-1)
        logits = _clean_logits(self.model, x, logits)
        order = logits.argsort(1, descending=True)
        out, robust = x.detach().clone(), logits.argmax(1) == y
        for j in range(1, min(self.n_targets, logits.shape[1] - 1) + 1):
            idx = robust.nonzero().view(-1)
            if idx.numel() == 0:
                break
            adv, n = self.min_norm(x[idx], y[idx], order[idx, j])
            ok = n <= eps[idx]
            out[idx[ok]] = adv[ok]
            robust[idx[ok]] = False
        return out


def _p_schedule(p_init: float, i: int) -> float:
    """Square's fraction of pixels changed at iteration i (reference schedule, not rescaled, as AutoAttack)."""
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if i <= bound:
            return p_init / div
    return p_init / 512


def _l2_window(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """Square L2's block of shape ``sizes`` (2 or 3 axes): sum over centred squares (cubes) of side 2k+1 of
    1/(k+1)^2, L2-normalised; the distance to the centre is the Chebyshev distance over all axes."""
    n = len(sizes)
    dist = torch.zeros((), dtype=torch.long, device=device)
    for ax, a in enumerate(sizes):
        view = [1] * n
        view[ax] = a
        dist = torch.maximum(dist, (torch.arange(a, device=device) - a // 2).abs().view(view))
    k_max = max(a // 2 for a in sizes) + 1
    w = 1.0 / torch.arange(1, k_max + 1, device=device, dtype=torch.float32).pow(2)
    tail = w.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{k' >= k} w[k']
    m = tail[dist]
    return m / m.norm()


def _l2_eta(s: int, gen: torch.Generator, device: torch.device, n: int = 2) -> torch.Tensor:
    """Square L2's (s,) * n update: +block over the first half of one axis, -block over the second half.

    2-D (Algorithm 3): the split runs along rows, transposed with probability 1/2. 3-D (our generalisation):
    the split axis is drawn uniformly among D, H, W.
    """
    half = s // 2
    top = _l2_window((half,) + (s,) * (n - 1), device) if half else torch.zeros((0,) + (s,) * (n - 1), device=device)
    d = torch.cat([top, -_l2_window((s - half,) + (s,) * (n - 1), device)])
    d = d / d.norm()
    u = float(torch.rand((), generator=gen, device=device))
    if n == 2:
        return d.T if u > 0.5 else d
    return d.movedim(0, min(int(u * n), n - 1))


def _side(p: float, spatial: Sequence[int]) -> int:
    """Square's window side: the square (cube) holding a fraction p of the H*W (D*H*W) positions."""
    v = p * math.prod(spatial)
    return round(math.sqrt(v) if len(spatial) == 2 else v ** (1.0 / len(spatial)))


def _corner(s: int, spatial: Sequence[int], gen: torch.Generator, device: torch.device) -> tuple[int, ...]:
    """A window corner, uniform per axis over all placements of side s."""
    return tuple(int(torch.randint(0, max(n - s, 0) + 1, (1,), generator=gen, device=device)) for n in spatial)


def _window(corner: Sequence[int], s: int) -> tuple[slice, ...]:
    return (slice(None), slice(None), *(slice(v, v + s) for v in corner))


class Square:
    """Square attack, untargeted, "linf" or "l2": ``n_queries`` random-search steps on the margin loss.

    Images (B, C, H, W) or volumes (B, C, D, H, W). On volumes the squares become cubes over (D, H, W) of side
    ``round((p D H W)^(1/3))`` (so that a fraction p of the voxels changes, as p of the pixels in 2-D), the Linf
    initial stripes run along W (constant over D and H), and the L2 block is the 3-D twin of Algorithm 3's
    (Chebyshev-distance shells, split along a random axis): Andriushchenko et al.'s update, generalised by us.
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "linf", n_queries: int = 5000,
                 p_init: float = 0.8, seed: int | None = 0) -> None:
        _check_norm(norm)
        self.model, self.eps, self.norm, self.n_queries, self.p_init, self.seed = (
            model, eps, norm, int(n_queries), float(p_init), seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(x, y)

    def _sign(self, shape, gen, x):
        return torch.where(torch.rand(shape, generator=gen, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)

    def _unit(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape[:2]) + (1,) * (x.ndim - 2)

    def _init(self, x: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        sp, n = tuple(x.shape[2:]), x.ndim - 2
        if self.norm == "linf":  # stripes of +-eps along the last axis
            return (x + eps * self._sign(tuple(x.shape[:2]) + (1,) * (n - 1) + (sp[-1],), gen, x)).clamp(0, 1)
        ref = sp[0] if n == 2 else min(sp)
        s = max(ref // 5, 1)
        delta = torch.zeros_like(x)
        off = (ref - s * 5) // 2 if ref >= 5 else 0
        for corner in itertools.product(*(range(off, m - s + 1, s) for m in sp)):
            delta[_window(corner, s)] += _l2_eta(s, gen, x.device, n).to(x.dtype) * self._sign(self._unit(x), gen, x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (x + delta / perturbation_norm(delta, "l2").clamp_min(1e-12).view(shape) * eps).clamp(0, 1)

    def _propose(self, x: torch.Tensor, xb: torch.Tensor, eps: torch.Tensor, i: int, gen: torch.Generator):
        sp, n, c = tuple(x.shape[2:]), x.ndim - 2, x.shape[1]
        side = _side(_p_schedule(self.p_init, i), sp)
        if self.norm == "linf":
            s = min(max(side, 1), *sp)
            win = _window(_corner(s, sp, gen, x.device), s)
            new = xb.clone()
            new[win] = x[win] + eps * self._sign(self._unit(x), gen, x)
            return torch.minimum(torch.maximum(new, x - eps), x + eps).clamp(0, 1)
        s = max(side, 3)
        s = min(s + (s % 2 == 0), *sp)
        win, win2 = (_window(_corner(s, sp, gen, x.device), s) for _ in range(2))
        dims, shape = tuple(range(2, x.ndim)), (-1,) + (1,) * (x.ndim - 1)
        delta = xb - x
        mask = torch.zeros_like(x)
        mask[win], mask[win2] = 1.0, 1.0
        n_img = perturbation_norm(delta, "l2").view(shape)
        n_wins = (delta * mask).pow(2).sum(dims, keepdim=True).sqrt()  # (B, C, 1, 1[, 1])
        n_w1 = delta[win].pow(2).sum(dims, keepdim=True).sqrt()
        upd = _l2_eta(s, gen, x.device, n).to(x.dtype) * self._sign(self._unit(x), gen, x) + delta[win] / (1e-12 + n_w1)
        budget = ((eps.pow(2) - n_img.pow(2)).clamp_min(0) / c + n_wins.pow(2)).sqrt()
        upd = upd / (1e-12 + upd.pow(2).sum(dims, keepdim=True).sqrt()) * budget
        delta = delta.clone()
        delta[win2] = 0.0
        delta[win] = upd
        return (x + delta / perturbation_norm(delta, "l2").clamp_min(1e-12).view(shape) * eps).clamp(0, 1)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Examples (B, C, [D,] H, W) in [0, 1] within eps; per sample the lowest-margin point found."""
        check_images(x, "x", ndim=(4, 5))
        y = _labels(x, y)
        x = x.detach()
        eps = per_sample(self.eps, x.shape[0], x, "eps")
        gen = torch.Generator(device=x.device)
        gen.manual_seed(0 if self.seed is None else int(self.seed))
        with attack_mode(self.model), torch.no_grad():
            best = self._init(x, eps, gen)
            marg = _margin(self.model(best), y)
            live = eps.view(-1) > 0  # a zero budget has nothing to search
            for i in range(self.n_queries):
                idx = ((marg > 0) & live).nonzero().view(-1)
                if idx.numel() == 0:
                    break
                new = self._propose(x[idx], best[idx], eps[idx], i, gen)
                m = _margin(self.model(new), y[idx])
                up = m < marg[idx]
                best[idx[up]], marg[idx[up]] = new[up], m[up]
        return best


@dataclass
class AutoAttackResult:
    """``x_adv`` (B, C, H, W); per sample ``broken_by`` (the attack that broke it, "clean" if misclassified
    without attack, None if robust) and ``robust`` (B,) bool; ``attacks_ran`` names what ran (with the loss
    substitute for K < 4); ``robust_accuracy_after`` the cumulative robust accuracy after each attack."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    broken_by: list[str | None]
    attacks_ran: list[str]
    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_after: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class AutoAttack:
    """The standard AutoAttack ensemble (Linf or L2), or a subset (``attacks``) for speed.

    Settings of ``version="standard"`` (reference ``set_version``): APGD-CE 100 steps, 1 restart; APGD-T 100
    steps, 9 targets; FAB-T 100 steps, 9 targets; Square 5000 queries, ``p_init`` 0.8. ``steps``,
    ``n_queries`` and ``n_targets`` override them (reduced runs are stated as such by the caller).
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, norm: str = "linf", version: str = "standard",
                 seed: int = 0, steps: int = 100, n_queries: int = 5000, n_targets: int = 9,
                 attacks: Sequence[str] | None = None) -> None:
        _check_norm(norm)
        if version != "standard":
            raise ConfigError(f"only version='standard' is implemented, got {version!r}")
        attacks = tuple(STANDARD if attacks is None else attacks)
        bad = [a for a in attacks if a not in STANDARD]
        if bad or not attacks:
            raise ConfigError(f"attacks must be a non-empty subset of {STANDARD}, got {list(attacks)}")
        check_budget(float(torch.as_tensor(eps).max()), norm)
        self.model, self.eps, self.norm, self.seed = model, eps, norm, seed
        self.steps, self.n_queries, self.n_targets, self.attacks = int(steps), int(n_queries), int(n_targets), attacks

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y).x_adv

    def _attack(self, name: str, eps: torch.Tensor):
        if name == "apgd-ce":
            return APGD(self.model, eps, steps=self.steps, norm=self.norm, loss="ce", seed=self.seed)
        if name == "apgd-t":
            return APGDT(self.model, eps, steps=self.steps, norm=self.norm, n_targets=self.n_targets, seed=self.seed)
        if name == "fab-t":
            return FAB(self.model, eps, norm=self.norm, steps=self.steps, n_targets=self.n_targets)
        return Square(self.model, eps, norm=self.norm, n_queries=self.n_queries, seed=self.seed)

    def run(self, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None = None) -> AutoAttackResult:
        """Attack images (B, C, H, W) or volumes (B, C, D, H, W) in [0, 1], labels (B,); see ``AutoAttackResult``.

        ``clean_logits``: (B, K) logits of ``x`` when the caller already has them (the audit's shared clean
        forward): no clean forward is run."""
        check_images(x, "x", ndim=(4, 5))
        y = _labels(x, y)
        x = x.detach()
        b = x.shape[0]
        eps = per_sample(self.eps, b, x, "eps").view(-1)
        logits = _clean_logits(self.model, x, clean_logits)
        k = logits.shape[1]
        robust = logits.argmax(1) == y
        broken: list[str | None] = [None if r else "clean" for r in robust.tolist()]
        x_adv, ran, after, notes = x.clone(), [], {}, []
        clean = float(robust.float().mean())
        for name in self.attacks:
            label = "apgd-t(margin)" if name == "apgd-t" and k < 4 else name
            if label != name:
                notes.append(f"K = {k} < 4: the targeted DLR loss needs the 3rd and 4th largest logits; APGD-T "
                             "used the targeted margin z_t - z_y")
            idx = (robust & (eps > 0)).nonzero().view(-1)
            if idx.numel():
                atk = self._attack(name, eps[idx])
                adv = (atk.perturb(x[idx], y[idx], logits=logits[idx]) if name in ("apgd-t", "fab-t")
                       else atk(x[idx], y[idx]))
                fooled = self._fooled(x[idx], adv, y[idx])
                x_adv[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
                for i in idx[fooled].tolist():
                    broken[i] = label
                ran.append(label)
            after[label] = float(robust.float().mean())
        self._check_ball(x, x_adv, eps)
        return AutoAttackResult(x_adv=x_adv, robust=robust, broken_by=broken, attacks_ran=ran, clean_accuracy=clean,
                                robust_accuracy=float(robust.float().mean()), robust_accuracy_after=after,
                                notes=notes)

    def _fooled(self, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) bool: is ``adv`` misclassified? ``x`` are correctly classified images, so a row the attack
        left unchanged is not fooled and needs no forward."""
        moved = (adv != x).flatten(1).any(1)
        fooled = torch.zeros_like(moved)
        if bool(moved.any()):
            with attack_mode(self.model), torch.no_grad():
                fooled[moved] = self.model(adv[moved]).argmax(1) != y[moved]
        return fooled

    def _check_ball(self, x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor) -> None:
        size = perturbation_norm(x_adv - x, self.norm)
        if bool((size > eps * (1 + 1e-5) + 1e-7).any()) or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
            raise RuntimeError(f"AutoAttack produced a point outside the {self.norm} ball or [0, 1] "
                               f"(max size {float(size.max()):.6g}): a bug, please report")

