"""Minimum-norm attacks: DeepFool and Carlini-Wagner L2; the per-image robustness radius.

- ``DeepFool(model, norm="l2" | "linf")(x, y)`` (Moosavi-Dezfooli et al. 2016, "DeepFool: a simple and
  accurate method to fool deep neural networks", Algorithm 2 (multiclass) and its l_p extension of section
  3.3 (Linf: dual exponent q = 1)). The iterate ``x_i = x + r_tot`` is kept in the [0, 1] box (as ART does);
  the overshoot scales ``r_tot`` once after the loop (paper section 4, as ART).
- ``CarliniWagnerL2(model)(x, y)`` (Carlini & Wagner 2017, "Towards evaluating the robustness of neural
  networks": objective f6 of section IV.A, the tanh change of variables ``x' = (tanh(w) + 1) / 2`` of
  section IV.B, the L2 attack of section V.A: ``||x' - x||_2^2 + c * max(Z_y - max_{j != y} Z_j, -kappa)``,
  Adam, binary search on c).
- ``robustness_radius(model, x, y, norm, method)``: per image the norm (pixel units) of the smallest
  example found; 0 for an image already misclassified, inf with a reason where none was found.

Both attacks are batched with per-sample stopping, take gradients w.r.t. the input only and run the model
in eval mode (``attack_mode``, restored also on error). Images (B, C, H, W) or volumes (B, C, D, H, W) in [0, 1]
(every norm is over all C*H*W or C*D*H*W values of a sample); outputs stay in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from medxai._util.validate import check_images, check_logits
from medxai.attacks.pgd import _clean_logits, attack_mode
from medxai.errors import ConfigError, InputError

__all__ = ["CarliniWagnerL2", "DeepFool", "RadiusResult", "robustness_radius"]

_TOL = 1e-8  # DeepFool's guard against a zero gradient difference (ART: 1e-7)
NORMS = ("l2", "linf")
METHODS = ("deepfool", "cw")


def _labels(x: torch.Tensor, y: torch.Tensor | list) -> torch.Tensor:
    y = torch.as_tensor(y, device=x.device)
    if y.ndim != 1 or y.is_floating_point() or y.shape[0] != x.shape[0]:
        raise InputError(f"y must be ({x.shape[0]},) class indices, got {y.dtype} {tuple(y.shape)}")
    return y.long()


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Z_y - max_{j != y} Z_j`` per sample (B,)."""
    z = logits.float()
    zy = z.gather(1, y.view(-1, 1)).view(-1)
    other = z.scatter(1, y.view(-1, 1), -float("inf")).amax(1)
    return zy - other


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm (B,) of (B, ...) perturbations in pixel units: "l2" or "linf"."""
    d = delta.flatten(1).float()
    return d.norm(dim=1) if norm == "l2" else d.abs().amax(1)


class DeepFool:
    """DeepFool, multiclass (Algorithm 2), "l2" or "linf"; ``candidates`` classes of highest clean logit.

    Each iteration linearises ``f'_k = Z_k - Z_y`` around the current point, steps to the nearest
    linearised boundary ``l = argmin_k |f'_k| / ||w'_k||_q`` with ``r = |f'_l| / ||w'_l||_q^q * |w'_l|^(q-1)
    * sign(w'_l)`` (q = 2 for L2, q = 1 for Linf) and accumulates ``r_tot`` (kept so that ``x + r_tot`` is in
    [0, 1]); a sample stops as soon as the label at ``x + r_tot`` differs from ``y``. The output is
    ``clamp(x + (1 + overshoot) r_tot, 0, 1)`` (or ``x + r_tot`` where only that one is misclassified).
    """

    def __init__(self, model: nn.Module, norm: str = "l2", overshoot: float = 0.02, max_iter: int = 50,
                 candidates: int = 10) -> None:
        if norm not in NORMS:
            raise ConfigError(f"DeepFool norm must be one of {NORMS}, got {norm!r}")
        if max_iter < 1 or candidates < 2 or overshoot < 0:
            raise ConfigError(f"DeepFool needs max_iter >= 1, candidates >= 2, overshoot >= 0; got {max_iter}, "
                              f"{candidates}, {overshoot}")
        self.model, self.norm, self.overshoot = model, norm, float(overshoot)
        self.max_iter, self.candidates = int(max_iter), int(candidates)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.perturb(x, y, logits)

    def _step(self, xa: torch.Tensor, y: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at xa, the DeepFool step r (B, C, H, W)) for the rows of xa."""
        xa = xa.detach().requires_grad_(True)
        logits = self.model(xa)
        zy = logits.gather(1, y.view(-1, 1)).view(-1)
        f, grads = [], []
        for j in range(cand.shape[1]):
            fj = logits.gather(1, cand[:, j:j + 1]).view(-1) - zy
            (g,) = torch.autograd.grad(fj.sum(), xa, retain_graph=j + 1 < cand.shape[1])
            f.append(fj.detach().float())
            grads.append(g.detach())
        f_all, w = torch.stack(f, 1), torch.stack(grads, 1)  # (B, m), (B, m, C, H, W)
        q = 2 if self.norm == "l2" else 1
        wn = w.flatten(2).float().norm(p=q, dim=2) + _TOL  # (B, m)
        dist = f_all.abs() / wn
        dist = dist.masked_fill(cand == y.view(-1, 1), float("inf"))
        lj = dist.argmin(1)
        idx = torch.arange(xa.shape[0], device=xa.device)
        fl, wl, nl = f_all[idx, lj].abs(), w[idx, lj], wn[idx, lj]
        shape = (-1,) + (1,) * (xa.ndim - 1)
        r = (fl / nl.pow(2)).view(shape) * wl if q == 2 else (fl / nl).view(shape) * wl.sign()
        return logits.detach(), r.to(xa.dtype)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Examples (B, C, [D,] H, W) in [0, 1]; where no label change is found, the last iterate; images
        misclassified to begin with are returned unchanged. ``logits``: (B, K) clean logits of ``x`` when the
        caller has them (no clean forward is run)."""
        check_images(x, "x", ndim=(4, 5))
        y = _labels(x, y)
        x = x.detach()
        r_tot = torch.zeros_like(x)
        with attack_mode(self.model):
            logits = _clean_logits(self.model, x, logits)
            k = logits.shape[1]
            if k < 2:
                raise InputError(f"DeepFool needs >= 2 classes (logits (B, K)), got K = {k}")
            cand = logits.topk(min(self.candidates, k), dim=1).indices
            # y need not be the top class; make sure it is a candidate (its column is then masked)
            cand[:, -1] = torch.where((cand == y.view(-1, 1)).any(1), cand[:, -1], y)
            active = logits.argmax(1) == y
            moved = active.nonzero().view(-1)  # the images attacked (the others keep r_tot = 0)
            for _ in range(self.max_iter):
                idx = active.nonzero().view(-1)
                if idx.numel() == 0:
                    break
                la, r = self._step(x[idx] + r_tot[idx], y[idx], cand[idx])
                still = la.argmax(1) == y[idx]
                active[idx] = still
                go = idx[still]
                r_tot[go] = (x[go] + r_tot[go] + r[still]).clamp(0, 1) - x[go]
            out = (x + (1 + self.overshoot) * r_tot).clamp(0, 1)
            if moved.numel():
                with torch.no_grad():
                    # the overshoot is a final scaling (paper section 4, ART); keep the plain iterate where it
                    # is adversarial and the scaled point is not (possible on a non-linear model)
                    plain, ym = x[moved] + r_tot[moved], y[moved]
                    keep = (self.model(out[moved]).argmax(1) == ym) & (self.model(plain).argmax(1) != ym)
                out[moved[keep]] = plain[keep]
        return out


class CarliniWagnerL2:
    """Carlini-Wagner L2, untargeted: minimise ``||x' - x||^2 + c * max(Z_y - max_{j!=y} Z_j, -kappa)``.

    ``x' = (tanh(w) + 1) / 2`` keeps the box; Adam (lr, ``steps`` per constant); ``binary_search_steps``
    constants per sample from ``c_init``: after a success ``c <- (lo + hi) / 2`` with ``hi = c``, else
    ``lo = c`` and ``c <- 10 c`` until a success bounds it (the authors' ``l2_attack.py`` schedule).
    Early abort per sample: every ``steps // 10`` steps, stop if the loss fell by less than 0.01 %.
    Returns per sample the smallest successful example (margin ``< -kappa``), else ``x`` itself.
    """

    def __init__(self, model: nn.Module, kappa: float = 0.0, steps: int = 100, lr: float = 0.01,
                 binary_search_steps: int = 9, c_init: float = 1e-3, abort_early: bool = True) -> None:
        if steps < 1 or binary_search_steps < 1 or lr <= 0 or c_init <= 0 or kappa < 0:
            raise ConfigError(f"CW needs steps, binary_search_steps >= 1 and lr, c_init > 0, kappa >= 0; got "
                              f"{steps}, {binary_search_steps}, {lr}, {c_init}, {kappa}")
        self.model, self.kappa, self.steps, self.lr = model, float(kappa), int(steps), float(lr)
        self.bs_steps, self.c_init, self.abort_early = int(binary_search_steps), float(c_init), bool(abort_early)
        self.found: torch.Tensor | None = None  # (B,) bool of the last call

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(x, y)

    def _optimise(self, x: torch.Tensor, w0: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
                  best: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One constant per sample: Adam on w; updates ``best`` (l2 (B,), x_adv) in place; returns found (B,)."""
        best_l2, best_x = best
        b = x.shape[0]
        dw, m, v = torch.zeros_like(w0), torch.zeros_like(w0), torch.zeros_like(w0)
        found = torch.zeros(b, dtype=torch.bool, device=x.device)
        live = torch.ones(b, dtype=torch.bool, device=x.device)
        prev = torch.full((b,), float("inf"), device=x.device)
        check = max(self.steps // 10, 1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        for t in range(1, self.steps + 1):
            dw.requires_grad_(True)
            xa = (torch.tanh(w0 + dw) + 1) / 2
            logits = self.model(xa)
            l2sq = (xa - x).flatten(1).float().pow(2).sum(1)
            marg = _margin(logits, y)
            loss = l2sq + c * marg.clamp_min(-self.kappa)
            (g,) = torch.autograd.grad(loss.sum(), dw)
            dw = dw.detach()
            with torch.no_grad():
                succ = marg < -self.kappa
                l2 = l2sq.sqrt()
                better = succ & (l2 < best_l2)
                best_l2[better], best_x[better] = l2[better], xa.detach()[better]
                found |= succ
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                upd = self.lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
                dw = dw - upd * live.view(shape)
                if self.abort_early and t % check == 0:
                    live &= ~(loss.detach() > prev * 0.9999)
                    prev = loss.detach()
                    if not bool(live.any()):
                        break
        return found

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Examples (B, C, [D,] H, W) in [0, 1] (``x`` where none was found; ``self.found`` says which)."""
        check_images(x, "x", ndim=(4, 5))
        y = _labels(x, y)
        x = x.detach()
        b = x.shape[0]
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lo = torch.zeros(b, device=x.device)
        hi = torch.full((b,), 1e10, device=x.device)
        c = torch.full((b,), self.c_init, device=x.device)
        best_l2 = torch.full((b,), float("inf"), device=x.device)
        best_x = x.clone()
        with attack_mode(self.model):
            for _ in range(self.bs_steps):
                ok = self._optimise(x, w0, y, c, (best_l2, best_x))
                hi = torch.where(ok, torch.minimum(hi, c), hi)
                lo = torch.where(ok, lo, torch.maximum(lo, c))
                c = torch.where(hi < 1e9, (lo + hi) / 2, c * 10)
        self.found = torch.isfinite(best_l2)
        return best_x


@dataclass
class RadiusResult:
    """Per image (B,): ``radius`` in pixel units (0: already misclassified; inf: none found, see ``reason``),
    the examples ``x_adv`` and a ``reason`` string per image; ``summary()`` for a report histogram."""

    radius: torch.Tensor
    x_adv: torch.Tensor
    reason: list[str]
    norm: str
    method: str
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Counts and quantiles (over the images where an example was found, radius > 0), JSON-ready:
        ``radii`` lists every image's radius with None where none was found (JSON has no inf)."""
        r = self.radius.detach().float().cpu()
        found = torch.isfinite(r) & (r > 0)
        out = {"norm": self.norm, "method": self.method, "n": int(r.numel()),
               "n_misclassified": int((r == 0).sum()), "n_found": int(found.sum()),
               "n_not_found": int(torch.isinf(r).sum()),
               "radii": [float(v) if math.isfinite(v) else None for v in r.tolist()]}
        vals = r[found]
        if vals.numel():
            q = torch.quantile(vals.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
            out.update(q25=float(q[0]), median=float(q[1]), q75=float(q[2]), mean=float(vals.mean()),
                       min=float(vals.min()), max=float(vals.max()))
        else:
            out.update(q25=float("nan"), median=float("nan"), q75=float("nan"), mean=float("nan"),
                       min=float("nan"), max=float("nan"),
                       nan_reason="no initially correct image with an adversarial example found")
        return out

def robustness_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "l2",
                      method: str = "deepfool", *, batch_size: int = 64, clean_logits: torch.Tensor | None = None,
                      **kw) -> RadiusResult:
    """Per-image minimal perturbation norm (pixel units of [0, 1] images) found by ``method``.

    ``method="deepfool"`` (``norm`` "l2" or "linf") or ``"cw"`` (L2 only); ``kw`` go to the attack. The radius
    is an upper bound of the true minimal-norm distance to the decision boundary (exact on linear models).
    Images are attacked in chunks of ``batch_size`` (DeepFool holds ``candidates`` gradients per image),
    halved on GPU out-of-memory (``medxai.explain.engine.for_chunks``); per-image results do not depend on it.
    ``clean_logits``: (B, K) logits of ``x`` when the caller has them (no clean forward is run).
    """
    from medxai.explain.engine import for_chunks

    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if norm not in NORMS or (method == "cw" and norm != "l2"):
        raise ConfigError(f"norm {norm!r} is not available for method {method!r} (deepfool: l2, linf; cw: l2)")
    check_images(x, "x", ndim=(4, 5))
    y = _labels(x, y)
    if clean_logits is not None:  # before any attack work
        check_logits(clean_logits, x.shape[0])
    atk = DeepFool(model, norm=norm, **kw) if method == "deepfool" else CarliniWagnerL2(model, **kw)
    x_adv = torch.empty_like(x)
    clean_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    fooled = torch.zeros_like(clean_wrong)

    def chunk(a: int, b: int) -> None:
        xs, ys = x[a:b], y[a:b]
        z0 = _clean_logits(model, xs, None if clean_logits is None else clean_logits[a:b])
        adv = atk(xs, ys, z0) if method == "deepfool" else atk(xs, ys)
        wrong = z0.argmax(1) != ys
        fool = torch.zeros_like(wrong)
        right = (~wrong).nonzero().view(-1)  # misclassified images need no adversarial check (radius 0)
        if right.numel():
            with attack_mode(model), torch.no_grad():
                fool[right] = model(adv[right]).argmax(1) != ys[right]
        x_adv[a:b], clean_wrong[a:b], fooled[a:b] = adv, wrong, fool

    for_chunks(x.shape[0], batch_size, chunk, what="images")
    radius = perturbation_norm(x_adv - x, norm).to(x.device)
    radius = torch.where(clean_wrong, torch.zeros_like(radius), radius)
    radius = torch.where(~clean_wrong & ~fooled, torch.full_like(radius, float("inf")), radius)
    x_adv = torch.where(clean_wrong.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
    why = (f"no label change within max_iter = {atk.max_iter} DeepFool iterations" if method == "deepfool"
           else f"no misclassified point for any of the {atk.bs_steps} binary-search constants")
    reason = ["already misclassified" if w else ("found" if f else f"not found: {why}")
              for w, f in zip(clean_wrong.tolist(), fooled.tolist(), strict=True)]
    return RadiusResult(radius=radius, x_adv=x_adv, reason=reason, norm=norm, method=method)
