"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015), input-only.

``PGD(model, eps, ...)(x, y) -> x_adv`` (the torchattacks call convention). Conventions follow
``definitions.md`` section 3: gradient w.r.t. the input only -> step -> project delta onto the
eps-ball -> clamp to [0, 1]; eps and step size in pixel units of the [0, 1] image; the model in
eval mode during the attack, restored afterwards (each module's mode, each parameter's
``requires_grad``), also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from medxai._util.validate import check_images, check_logits
from medxai.attacks.steps import STEPS, AttackStep
from medxai.errors import InputError

#: A per-sample loss ``loss(logits, y) -> (B,)``; a scalar is accepted when only the gradient is
#: needed (``keep="last"`` and ``restarts=1``).
AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES = ("ce", "bce")
KEEPS = ("last", "best")


@contextmanager
def attack_mode(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm statistics untouched, no dropout) and frozen parameters for the block.

    Restores every module's ``training`` flag and every parameter's ``requires_grad`` on exit,
    also on error. Gradients are then taken w.r.t. the input only; no ``.grad`` is written.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def per_sample(v: float | torch.Tensor, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A float, 0-d or (B,) value as a (B, 1, 1, 1) tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(batch)
    t = t.reshape(-1)
    if t.shape[0] != batch:
        raise InputError(f"{name} must be a number or have shape ({batch},), got {tuple(torch.as_tensor(v).shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InputError(f"{name} must be finite and >= 0, got {t.tolist()[:8]}")
    return t.view(batch, *([1] * (like.ndim - 1)))


def _multilabel_targets(y: torch.Tensor, k: int, label: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets in {0, 1}, mask of labelled entries); NaN and other values (CheXpert -1) are unlabelled."""
    y = y.float()
    if label is not None and y.ndim == 2:
        y = y[:, label]
    if label is None and (y.ndim != 2 or y.shape[1] != k):
        raise InputError(f"multilabel targets must have shape (B, {k}), got {tuple(y.shape)}")
    known = (y == 0) | (y == 1)
    return torch.where(known, y, torch.zeros_like(y)), known


class PGD:
    """Projected gradient descent, L-inf or L2, untargeted or targeted.

    Args:
        model: maps [0, 1] images (B, C, H, W) to logits (B, K) (binary tasks: K = 2).
        eps: radius of the ball in pixel units; a float or a (B,) tensor (per-sample budgets).
        steps: iterations k. ``step_size``: alpha; None means ``2.5 * eps / steps`` (Madry's README).
        norm: "linf" or "l2" (L2 over all C*H*W values of a sample).
        random_start: start uniformly in the ball (L-inf: box; L2: ball) instead of at x.
        restarts: independent runs; per sample the most successful result is kept
            (a misclassified point beats a correct one; ties broken by the larger loss).
        targeted: ``y`` are target classes and the loss is minimised.
        loss: "ce" (softmax cross-entropy, y (B,) class indices), "bce" (multilabel: sigmoid BCE
            averaged over the labelled entries of y (B, K) with NaN / -1 unlabelled; with ``label=k``
            only output k against y[:, k] or a (B,) y), or a callable ``loss(logits, y) -> (B,)``.
        keep: "last" (the final iterate, as ART and Madry) or "best" (per sample the most successful
            point over all steps and restarts; costs one extra forward per restart). After a tracked
            attack ("best" or restarts > 1) ``adv_logits`` holds the (B, K) logits of the returned points.
        seed: seeds the random start (None: torch's global generator).
        batch_size: samples per model call (the random start is drawn for the whole batch first, so
            the result does not depend on it); None: cache-sized chunks on CPU
            (``explain.engine.model_batch_for``), the whole batch on a GPU or with a callable loss.
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, steps: int = 10,
                 step_size: float | torch.Tensor | None = None, norm: str = "linf", random_start: bool = True,
                 restarts: int = 1, targeted: bool = False, loss: str | AttackLoss = "ce", keep: str = "last",
                 label: int | None = None, seed: int | None = None, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        if restarts < 1:
            raise InputError(f"restarts must be >= 1, got {restarts}")
        if keep not in KEEPS:
            raise InputError(f"keep must be one of {KEEPS}, got {keep!r}")
        if not callable(loss) and loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
        from medxai.attacks.budget import check_budget

        check_budget(float(torch.as_tensor(eps).max()), norm)  # Linf above 1: "did you mean 8/255?"
        self.model = model
        self.eps = eps
        self.steps = int(steps)
        self.step_size = step_size
        self.norm = norm
        self.stepper: AttackStep = STEPS.get(norm)()
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.loss = loss
        self.keep = keep
        self.label = label
        self.seed = seed

    # -- loss and success -------------------------------------------------------------------------
    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,) (or a scalar from a user callable)."""
        if callable(self.loss):
            return self.loss(logits, y)
        logits = logits.float()
        if self.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        t, known = _multilabel_targets(y, logits.shape[1], self.label)
        z = logits[:, self.label] if self.label is not None else logits
        per = F.binary_cross_entropy_with_logits(z, t, reduction="none") * known
        if per.ndim == 1:
            return per
        return per.sum(1) / known.sum(1).clamp_min(1)

    def success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per sample (B,) bool: untargeted, the prediction differs from y; targeted, it equals y.

        For "bce": any labelled output's prediction (logit > 0) differs (untargeted) or all match
        (targeted). A user callable loss has no notion of success: all False (the loss decides).
        """
        if callable(self.loss):
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        if self.loss == "ce":
            hit = logits.argmax(1) == y
            return hit if self.targeted else ~hit
        t, known = _multilabel_targets(y, logits.shape[1], self.label)
        z = logits[:, self.label] if self.label is not None else logits
        wrong = ((z > 0).float() != t) & known
        if wrong.ndim == 2:
            return ~wrong.any(1) if self.targeted else wrong.any(1)
        return ~wrong if self.targeted else wrong

    def _check_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        y = y.to(x.device)
        if y.shape[0] != x.shape[0]:
            raise InputError(f"y must have {x.shape[0]} rows like x, got shape {tuple(y.shape)}")
        if self.loss == "ce":
            if y.ndim != 1 or y.is_floating_point():
                raise InputError(f"loss='ce' needs y as (B,) class indices, got {y.dtype} {tuple(y.shape)}")
            return y.long()
        return y

    # -- the attack -------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(x, y)

    def _chunk(self, x: torch.Tensor) -> int:
        """Samples per model call: cache-sized chunks on CPU (``engine.model_batch_for``; a chunk's iterates
        are the batch's, since each sample's loss and step are its own), the whole batch elsewhere or
        with a user loss (which may couple samples, e.g. a batch mean)."""
        if self.batch_size is not None:
            return self.batch_size
        if callable(self.loss) or x.device.type != "cpu":
            return x.shape[0]
        from medxai.explain.engine import model_batch_for

        return model_batch_for(x[:1])

    def _run_chunks(self, x: torch.Tensor, start: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                    alpha: torch.Tensor, chunk: int, consider: Callable[..., None], track: bool) -> list[torch.Tensor]:
        """One restart from ``start``, chunk by chunk (samples are independent: chunks give the batch's
        iterates); ``consider(slice, point, logits, losses)`` sees every iterate (keep="best") and, when
        ``track``, the final one. On CPU the chunk size is timed on the work itself (``engine.tuned_chunks``)."""
        parts: list[torch.Tensor] = []

        def run(i: int, j: int) -> None:
            sl = slice(i, j)
            parts.append(self._iterate(x[sl], start[sl], y[sl], eps[sl], alpha[sl],
                                       (lambda *a: consider(sl, *a)) if self.keep == "best" else None))
            if track:
                with torch.no_grad():
                    logits = self.model(parts[-1])
                    consider(sl, parts[-1], logits, self.losses(logits, y[sl]))

        b = x.shape[0]
        if self._tuned(x):
            from medxai.explain.engine import tuned_chunks

            tuned_chunks(b, chunk, run, model=self.model, key=("pgd", tuple(x.shape[1:]), x.dtype))
        else:
            for i in range(0, b, chunk):
                run(i, min(b, i + chunk))
        return parts

    def _tuned(self, x: torch.Tensor) -> bool:
        """Whether the chunk size is tuned: CPU cache-sized chunks that the caller did not fix."""
        return self.batch_size is None and not callable(self.loss) and x.device.type == "cpu"

    def _iterate(self, x: torch.Tensor, xa: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
                 consider: Callable[..., None] | None) -> torch.Tensor:
        """``steps`` signed (or normalised) gradient steps from ``xa``, projected on the eps-ball around ``x``
        and [0, 1]; ``consider(point, logits, losses)`` sees every iterate before its step."""
        for _ in range(self.steps):
            xa.requires_grad_(True)
            logits = self.model(xa)
            losses = self.losses(logits, y)
            (g,) = torch.autograd.grad(losses.sum(), xa)  # = the gradient w.r.t. delta
            xa = xa.detach()
            if consider is not None:
                consider(xa, logits.detach(), losses.detach())
            if self.targeted:
                g = -g
            delta = self.stepper.project(xa - x + self.stepper.step(g, alpha), eps)
            xa = (x + delta).clamp(0, 1)
        return xa

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *, delta0: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples (B, C, H, W) (or volumes (B, C, D, H, W)) in [0, 1] within eps of ``x``
        (same device and dtype).

        ``delta0`` replaces the random start of the first restart (e.g. TRADES' 0.001 * N(0, 1)).
        """
        self.adv_logits: torch.Tensor | None = None
        check_images(x, "x", ndim=(4, 5))
        y = self._check_y(x, y)
        x = x.detach()
        b = x.shape[0]
        eps = per_sample(self.eps, b, x, "eps")
        alpha = per_sample(2.5 * eps.view(-1) / self.steps if self.step_size is None else self.step_size,
                           b, x, "step_size")
        if not bool((eps > 0).any()):
            return x.clone()
        track = self.keep == "best" or self.restarts > 1
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(int(self.seed))
        best_x = x.clone()
        best_succ = torch.zeros(b, dtype=torch.bool, device=x.device)
        best_loss = torch.full((b,), -float("inf"), device=x.device)
        best_logits: list[torch.Tensor] = []
        have = torch.zeros(b, dtype=torch.bool, device=x.device)  # rows whose best point's logits are kept

        def consider(sl: slice, xa: torch.Tensor, logits: torch.Tensor, losses: torch.Tensor) -> None:
            if losses.ndim != 1:
                raise InputError("keep='best' and restarts > 1 need a per-sample loss (B,), got a scalar")
            succ = self.success(logits, y[sl])
            score = (-losses if self.targeted else losses).detach().float()
            bs, bl = best_succ[sl], best_loss[sl]  # views: the writes below land in the whole-batch tensors
            better = (succ & ~bs) | ((succ == bs) & (score > bl))
            if not best_logits:
                best_logits.append(torch.empty((b, logits.shape[1]), dtype=logits.dtype, device=logits.device))
            best_logits[0][sl][better] = logits.detach()[better]
            have[sl][better] = True
            best_x[sl][better] = xa[better]
            bs[better] = succ[better]
            bl[better] = score[better]

        chunk = self._chunk(x)
        with attack_mode(self.model):
            for r in range(self.restarts):
                if r == 0 and delta0 is not None:
                    delta = delta0.detach().to(x)
                elif self.random_start:
                    delta = self.stepper.random_perturb(x.shape, eps, generator=gen, device=x.device, dtype=x.dtype)
                else:
                    delta = torch.zeros_like(x)
                start = (x + delta).clamp(0, 1)
                parts = self._run_chunks(x, start, y, eps, alpha, chunk, consider, track)
                if not track:
                    return torch.cat(parts)
        # (B, K) logits of the returned points, so that callers need no forward to read them
        self.adv_logits = best_logits[0] if best_logits and bool(have.all()) else None
        return best_x


class FGSM(PGD):
    """Fast gradient sign method: one step of size ``step_size`` (default eps) from x, projected.

    With ``random_start=True`` and ``step_size=1.25 * eps`` this is the attack of fast adversarial
    training (Wong et al. 2020). ``norm="l2"`` gives the fast gradient method with a normalised step.
    """

    def __init__(self, model: nn.Module, eps: float | torch.Tensor, step_size: float | torch.Tensor | None = None,
                 norm: str = "linf", random_start: bool = False, targeted: bool = False,
                 loss: str | AttackLoss = "ce", label: int | None = None, seed: int | None = None) -> None:
        super().__init__(model, eps, steps=1, step_size=eps if step_size is None else step_size, norm=norm,
                         random_start=random_start, restarts=1, targeted=targeted, loss=loss, keep="last",
                         label=label, seed=seed)


def _clean_logits(model: nn.Module, x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    """(B, K) logits of ``x``: ``given`` (checked to have one row per image, moved to ``x``'s device) or a
    no-grad forward."""
    if given is None:
        with attack_mode(model), torch.no_grad():
            return model(x)
    return check_logits(given, x.shape[0]).detach().to(x.device)
