"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1): PGD with momentum (alpha = 0.75) and a step size
that starts at 2 * eps and halves at checkpoints when the loss stops rising.

Checkpoints follow the reference implementation: the first after ``ceil(0.22 N)`` iterations, then
shrinking by ``0.03 N`` down to ``0.06 N``. At a checkpoint the step of a sample halves (and it
restarts from its best point) if the loss rose in fewer than ``rho = 0.75`` of the steps since the
last one, or if the step was not halved last time and the best loss did not improve.

Losses: "ce" (any number of classes K >= 2) and "dlr" (the difference of logits ratio, needs
K >= 3: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``). ``attack_list(K)`` names the
untargeted attacks that apply to a K-class task.

``APGDT`` is APGD-T (section 4 of the paper, the AutoAttack variant): per target class t, APGD maximising
the targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, which needs K >= 4 (it uses
the 3rd and 4th largest logits). For K < 4 the substitute is the targeted margin ``z_t - z_y`` (the
numerator alone; with K = 2 it is the untargeted logit margin), recorded as loss "margin".

Images (B, C, H, W) or volumes (B, C, D, H, W); the norms run over all values of a sample.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medxai._util.validate import check_images
from medxai.attacks.pgd import PGD, _clean_logits, attack_mode, per_sample
from medxai.errors import InputError


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss per sample (B,); needs at least 3 classes."""
    if logits.shape[1] < 3:
        raise InputError(f"the DLR loss needs >= 3 classes, got {logits.shape[1]} (use APGD-CE)")
    z = logits.float()
    srt, _ = z.sort(dim=1)
    zy = z.gather(1, y.view(-1, 1)).view(-1)
    top_is_y = (srt[:, -1] == zy)
    other = torch.where(top_is_y, srt[:, -2], srt[:, -1])
    return -(zy - other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, section 4) per sample (B,); needs at least 4 classes."""
    if logits.shape[1] < 4:
        raise InputError(f"the targeted DLR loss needs >= 4 classes, got {logits.shape[1]} (use loss='margin')")
    z = logits.float()
    srt, _ = z.sort(dim=1)
    zy, zt = z.gather(1, y.view(-1, 1)).view(-1), z.gather(1, target.view(-1, 1)).view(-1)
    return -(zy - zt) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def targeted_margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``z_t - z_y`` per sample (B,): the targeted substitute for K < 4 classes."""
    z = logits.float()
    return z.gather(1, target.view(-1, 1)).view(-1) - z.gather(1, y.view(-1, 1)).view(-1)


def attack_list(num_classes: int) -> list[str]:
    """Untargeted APGD attacks valid for K classes: CE always, DLR from K = 3."""
    if num_classes < 2:
        raise InputError(f"need at least 2 classes, got {num_classes}")
    return ["apgd-ce"] if num_classes < 3 else ["apgd-ce", "apgd-dlr"]


class APGD(PGD):
    """Auto-PGD, untargeted, "linf" or "l2"; ``loss`` is "ce" or "dlr"; ``steps`` = N iterations.

    Returns per sample the first misclassified point found, else the point of highest loss.
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, steps: int = 100, norm: str = "linf",
                 restarts: int = 1, loss: str = "ce", seed: int | None = 0, rho: float = 0.75,
                 label: int | None = None, targeted: bool = False) -> None:
        if loss not in ("ce", "dlr"):
            raise InputError(f"APGD loss must be 'ce' or 'dlr', got {loss!r}")
        if targeted or label is not None:
            raise InputError("APGD here is untargeted and single-label")
        super().__init__(model, eps, steps=steps, norm=norm, random_start=True, restarts=restarts,
                         loss=dlr_loss if loss == "dlr" else "ce", keep="best", seed=seed)
        self.loss_name = loss
        self.rho = rho

    def success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) != y

    def _check_y(self, x, y):
        y = torch.as_tensor(y, device=x.device)
        if y.ndim != 1 or y.is_floating_point() or y.shape[0] != x.shape[0]:
            raise InputError(f"y must be ({x.shape[0]},) class indices, got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, delta0: torch.Tensor | None = None) -> torch.Tensor:
        check_images(x, "x", ndim=(4, 5))
        y = self._check_y(x, y)
        x = x.detach()
        b, n = x.shape[0], self.steps
        shape = (-1,) + (1,) * (x.ndim - 1)
        eps = per_sample(self.eps, b, x, "eps")
        if not bool((eps > 0).any()):
            return x.clone()
        gen = torch.Generator(device=x.device).manual_seed(int(self.seed)) if self.seed is not None else None
        k0 = max(math.ceil(0.22 * n), 1)
        k_min, k_decr = max(int(0.06 * n), 1), max(int(0.03 * n), 1)
        out = x.clone()
        out_succ = torch.zeros(b, dtype=torch.bool, device=x.device)
        out_loss = torch.full((b,), -float("inf"), device=x.device)

        def loss_grad(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            xa = xa.detach().requires_grad_(True)
            logits = self.model(xa)
            li = self.losses(logits, y)
            (g,) = torch.autograd.grad(li.sum(), xa)
            return li.detach().float(), g.detach(), logits.detach()

        def proj(v: torch.Tensor) -> torch.Tensor:
            return (x + self.stepper.project(v - x, eps)).clamp(0, 1)

        with attack_mode(self.model):
            for _ in range(self.restarts):
                xa = proj(x + self.stepper.random_perturb(x.shape, eps, generator=gen, device=x.device,
                                                          dtype=x.dtype))
                li, g, logits = loss_grad(xa)
                succ = self.success(logits, y)
                x_succ = torch.where(succ.view(shape), xa, x)
                found = succ.clone()
                x_best, g_best, l_best = xa.clone(), g.clone(), li.clone()
                eta = 2 * eps.clone()
                x_prev = xa.clone()
                l_prev = li.clone()
                rises = torch.zeros(b, device=x.device)
                halved_last = torch.ones(b, dtype=torch.bool, device=x.device)
                l_best_last = l_best.clone()
                since, k = 0, k0
                for i in range(n):
                    a = 0.75 if i > 0 else 1.0
                    z = proj(xa + self.stepper.step(g, eta))
                    x_new = proj(xa + a * (z - xa) + (1 - a) * (xa - x_prev))
                    x_prev, xa = xa, x_new
                    li, g, logits = loss_grad(xa)
                    s = self.success(logits, y)
                    newly = s & ~found
                    x_succ[newly] = xa[newly]
                    found |= s
                    rises += (li > l_prev).float()
                    l_prev = li
                    up = li > l_best
                    x_best[up], g_best[up], l_best[up] = xa[up], g[up], li[up]
                    since += 1
                    if since == k:
                        osc = rises <= k * self.rho
                        no_impr = (~halved_last) & (l_best_last >= l_best)
                        cut = osc | no_impr
                        halved_last = cut
                        l_best_last = l_best.clone()
                        if bool(cut.any()):
                            eta[cut] = eta[cut] / 2
                            xa[cut], g[cut] = x_best[cut], g_best[cut]
                        rises.zero_()
                        since = 0
                        k = max(k - k_decr, k_min)
                # keep across restarts: a misclassified point first, else the highest loss
                cand = torch.where(found.view(shape), x_succ, x_best)
                cand_loss = torch.where(found, torch.full_like(l_best, float("inf")), l_best)
                better = (found & ~out_succ) | ((found == out_succ) & (cand_loss > out_loss))
                out[better], out_succ[better], out_loss[better] = cand[better], found[better], cand_loss[better]
        return out


class APGDT(APGD):
    """APGD-T: for each of ``n_targets`` target classes (the 2nd, 3rd, ... largest clean logits), APGD maximising
    the targeted DLR loss (K >= 4) or the targeted margin ``z_t - z_y`` (K < 4, or ``loss="margin"``).

    Success is misclassification (``argmax != y``), as in the reference. Each target runs on the samples
    still correctly classified; per sample the first misclassified point found, else ``x``.
    ``n_targets`` is capped at K - 1 (AutoAttack standard: 9).
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, steps: int = 100, norm: str = "linf",
                 n_targets: int = 9, loss: str = "auto", seed: int | None = 0, rho: float = 0.75) -> None:
        if loss not in ("auto", "dlr", "margin"):
            raise InputError(f"APGD-T loss must be 'auto', 'dlr' or 'margin', got {loss!r}")
        super().__init__(model, eps, steps=steps, norm=norm, restarts=1, loss="ce", seed=seed, rho=rho)
        self.n_targets, self.target_loss = int(n_targets), loss
        self._target: torch.Tensor | None = None
        self.loss_used: str | None = None

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = targeted_dlr_loss if self.loss_used == "dlr" else targeted_margin_loss
        return fn(logits, y, self._target)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, delta0: torch.Tensor | None = None,
                logits: torch.Tensor | None = None) -> torch.Tensor:
        """``logits``: (B, K) clean logits of ``x`` when the caller has them (no clean forward)."""
        check_images(x, "x", ndim=(4, 5))
        y = self._check_y(x, y)
        eps = per_sample(self.eps, x.shape[0], x, "eps").view(-1)
        logits = _clean_logits(self.model, x, logits)
        k = logits.shape[1]
        self.loss_used = ("dlr" if k >= 4 else "margin") if self.target_loss == "auto" else self.target_loss
        order = logits.argsort(dim=1, descending=True)
        out = x.detach().clone()
        robust = logits.argmax(1) == y
        for j in range(1, min(self.n_targets, k - 1) + 1):
            idx = robust.nonzero().view(-1)
            if idx.numel() == 0:
                break
            self._target = order[idx, j]
            sub_eps, self.eps = self.eps, eps[idx]
            try:
                adv = super().perturb(x[idx], y[idx])
            finally:
                self.eps, self._target = sub_eps, None
            with attack_mode(self.model), torch.no_grad():
                fooled = self.model(adv).argmax(1) != y[idx]
            out[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        return out
