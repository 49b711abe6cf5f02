"""Robust training objectives for ``fit``: ``adversarial`` (PGD-k, mixed or Madry), ``trades``,
``fast`` (FGSM with random start), ``free`` (m replays) and ``corruption``.

Config: ``objective: {name: adversarial, eps: 2.5/255, steps: 5, step_size: 1.25/255, mix: 0.5}``.
Budgets are pixel units of the [0, 1] image (strings ``a/b`` accepted). Definitions and costs:
``definitions.md`` section 3. Every attack runs with the model in eval mode (BatchNorm
statistics untouched, no dropout) and restores it (``medxai.attacks.attack_mode``), except free
training, whose adversarial step *is* the training forward/backward (that is what makes it free).

Robust fine-tuning and "robustify the first layers" are recipes of the config, not objectives:

- fine-tune a robust model: ``model: {pretrained: runs/robust/best.safetensors}`` and
  ``train: {lr: 1e-5, objective: {name: standard}}`` (the adversarial study's 1e-5);
- keep the robust first layers: add ``model: {freeze: STAGE}`` (``medxai.models.freeze``: the
  frozen groups' parameters stop learning and their BatchNorm layers stay in eval mode), and
  train the rest with ``standard`` (or keep ``adversarial`` to robustify the head too).
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F

from medxai._util.seed import derive_seed
from medxai.attacks.budget import check_budget, parse_eps
from medxai.attacks.pgd import PGD, attack_mode
from medxai.errors import ConfigError
from medxai.train.objectives import OBJECTIVES, Objective, StepContext, StepOutput

log = logging.getLogger("medxai.train")


class CatastrophicOverfittingWarning(RuntimeWarning):
    """Fast adversarial training collapsed: PGD accuracy fell while FGSM accuracy stayed up."""


def _attack_loss(ctx: StepContext):
    """The task's training loss (a scalar; its input gradient has the per-sample directions)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ctx.loss_fn(logits.float(), y)

    return loss


def _check_norm(norm: str) -> str:
    if norm not in ("linf", "l2"):
        raise ConfigError(f"objective.norm must be 'linf' or 'l2', got {norm!r}")
    return norm


class _Budget:
    def __init__(self, eps: float | str, step_size: float | str | None, norm: str, warmup_epochs: float = 0) -> None:
        self.norm = _check_norm(norm)
        self.eps = check_budget(parse_eps(eps), self.norm, what="objective.eps")
        self.step_size = (None if step_size is None
                          else check_budget(parse_eps(step_size), self.norm, what="objective.step_size"))
        self._shape_checked = False
        if warmup_epochs < 0:
            raise ConfigError(f"objective.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = float(warmup_epochs)

    def check_shape(self, x: torch.Tensor) -> None:
        """Once: an L2 budget must be smaller than the diameter of the unit cube of these images."""
        if not self._shape_checked:
            check_budget(self.eps, self.norm, tuple(x.shape[1:]), what="objective.eps")
            self._shape_checked = True

    def scale(self, epoch: int) -> float:
        """Eps warm-up: eps grows linearly over the first ``warmup_epochs`` epochs (1 at the end)."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (epoch + 1) / self.warmup_epochs)


@OBJECTIVES.register("adversarial")
class Adversarial(Objective, _Budget):
    """PGD-k adversarial training: ``loss = (1 - mix) * L(x) + mix * L(x_adv)``.

    ``mix=1`` is Madry et al. (2018); ``mix=0.5`` the fundus study (Linf 2.5/255, 5 steps, step
    1.25/255, random start). ``step_size=None`` is ``2.5 * eps / steps``. ``warmup_epochs``: eps
    grows linearly from eps / warmup_epochs to eps. Cost ~ (2k + 3) / 3 of standard training for
    mix = 1 (k input-gradient passes of forward + input backward, one training step).
    """

    name = "adversarial"

    def __init__(self, eps: float | str, steps: int = 7, step_size: float | str | None = None, norm: str = "linf",
                 mix: float = 1.0, random_start: bool = True, warmup_epochs: float = 0) -> None:
        _Budget.__init__(self, eps, step_size, norm, warmup_epochs)
        if not 0 <= mix <= 1:
            raise ConfigError(f"objective.mix must be in [0, 1], got {mix}")
        if steps < 1:
            raise ConfigError(f"objective.steps must be >= 1, got {steps}")
        self.steps, self.mix, self.random_start = int(steps), float(mix), bool(random_start)

    def attack(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.scale(ctx.epoch)
        step = None if self.step_size is None else self.step_size * s
        atk = PGD(ctx.model, self.eps * s, steps=self.steps, step_size=step, norm=self.norm,
                  random_start=self.random_start, loss=_attack_loss(ctx))
        return atk(x, y)

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.check_shape(x)
        x_adv = self.attack(ctx, x, y)
        extra: dict[str, float] = {}
        with ctx.autocast():
            logits_adv = ctx.model(x_adv)
            loss_adv = ctx.loss_fn(logits_adv.float(), y)
            logits = None
            loss = loss_adv
            if self.mix < 1:
                logits = ctx.model(x)
                loss_clean = ctx.loss_fn(logits.float(), y)
                loss = (1 - self.mix) * loss_clean + self.mix * loss_adv
                extra["clean_loss"] = float(loss_clean.detach())
        ctx.backward_step(loss)
        extra["adv_loss"] = float(loss_adv.detach())
        extra["eps"] = self.eps * self.scale(ctx.epoch)
        if ctx.task != "multilabel":
            extra["adv_accuracy"] = float((logits_adv.detach().argmax(1) == y).float().mean())
        return StepOutput(loss=float(loss.detach()), logits=None if logits is None else logits.detach().float(),
                          extra=extra)


def _kl(logits_p: torch.Tensor, logits_q: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample KL(p || q) (B,): softmax over classes, or Bernoulli per label averaged (multilabel)."""
    p, q = logits_p.float(), logits_q.float()
    if task == "multilabel":
        lp1, lp0 = F.logsigmoid(p), F.logsigmoid(-p)
        lq1, lq0 = F.logsigmoid(q), F.logsigmoid(-q)
        return (lp1.exp() * (lp1 - lq1) + lp0.exp() * (lp0 - lq0)).mean(1)
    lp, lq = F.log_softmax(p, 1), F.log_softmax(q, 1)
    return (lp.exp() * (lp - lq)).sum(1)


@OBJECTIVES.register("trades")
class Trades(Objective, _Budget):
    """TRADES (Zhang et al. 2019): ``L(x, y) + beta * KL(f(x) || f(x_adv))``, x_adv maximising the
    KL by PGD from ``x + 0.001 * N(0, 1)`` (``steps``, ``step_size=None`` -> 2.5 eps / steps)."""

    name = "trades"

    def __init__(self, eps: float | str, beta: float = 6.0, steps: int = 10, step_size: float | str | None = None,
                 norm: str = "linf", warmup_epochs: float = 0) -> None:
        _Budget.__init__(self, eps, step_size, norm, warmup_epochs)
        if beta < 0:
            raise ConfigError(f"objective.beta must be >= 0, got {beta}")
        self.beta, self.steps = float(beta), int(steps)

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.check_shape(x)
        s = self.scale(ctx.epoch)
        with torch.no_grad(), attack_mode(ctx.model):
            clean_ref = ctx.model(x).float()
        atk = PGD(ctx.model, self.eps * s, steps=self.steps,
                  step_size=None if self.step_size is None else self.step_size * s, norm=self.norm,
                  loss=lambda logits, ref: _kl(ref, logits, ctx.task))
        x_adv = atk.perturb(x, clean_ref, delta0=0.001 * torch.randn_like(x))
        with ctx.autocast():
            logits = ctx.model(x)
            logits_adv = ctx.model(x_adv)
            natural = ctx.loss_fn(logits.float(), y)
            robust = _kl(logits, logits_adv, ctx.task).mean()
            loss = natural + self.beta * robust
        ctx.backward_step(loss)
        return StepOutput(loss=float(loss.detach()), logits=logits.detach().float(),
                          extra={"clean_loss": float(natural.detach()), "kl": float(robust.detach())})


class _CheckBatch:
    """Keeps one batch for per-epoch checks (the validation batch when the loop gives one)."""

    def __init__(self) -> None:
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._first is None:
            self._first = (x.detach().clone(), y.detach().clone())

    def batch(self, val_batch):
        return val_batch if val_batch is not None else self._first


@OBJECTIVES.register("fast")
class Fast(Objective, _Budget, _CheckBatch):
    """Fast adversarial training (Wong et al. 2020): FGSM from a uniform random start with step
    ``step_size`` (default 1.25 eps), projected, then one training step on x_adv (~1.7x the cost
    of standard training, ~(2 * 1 + 3) / 3).

    Catastrophic overfitting check (each epoch, ``check=True``): PGD-``check_steps`` accuracy
    (``check_restarts`` restarts) and FGSM accuracy on one batch (the loop's validation batch,
    else the first training batch). A warning (``CatastrophicOverfittingWarning``, also logged)
    when PGD accuracy falls by more than ``drop`` from the previous epoch (Wong et al.'s early
    stopping rule, 0.2) or trails FGSM accuracy by more than ``gap`` (0.3).
    """

    name = "fast"

    def __init__(self, eps: float | str, step_size: float | str | None = None, norm: str = "linf",
                 warmup_epochs: float = 0, check: bool = True, check_steps: int = 10, check_restarts: int = 1,
                 drop: float = 0.2, gap: float = 0.3) -> None:
        _Budget.__init__(self, eps, step_size, norm, warmup_epochs)
        _CheckBatch.__init__(self)
        self.check, self.check_steps, self.check_restarts = bool(check), int(check_steps), int(check_restarts)
        self.drop, self.gap = float(drop), float(gap)

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.remember(x, y)
        self.check_shape(x)
        s = self.scale(ctx.epoch)
        eps = self.eps * s
        alpha = 1.25 * eps if self.step_size is None else self.step_size * s
        atk = PGD(ctx.model, eps, steps=1, step_size=alpha, norm=self.norm, random_start=True,
                  loss=_attack_loss(ctx))
        x_adv = atk(x, y)
        with ctx.autocast():
            logits_adv = ctx.model(x_adv)
            loss = ctx.loss_fn(logits_adv.float(), y)
        ctx.backward_step(loss)
        extra = {"eps": eps}
        if ctx.task != "multilabel":
            extra["adv_accuracy"] = float((logits_adv.detach().argmax(1) == y).float().mean())
        return StepOutput(loss=float(loss.detach()), logits=None, extra=extra)

    def on_epoch_end(self, ctx: StepContext, val_batch) -> dict[str, float]:
        batch = self.batch(val_batch)
        if not self.check or batch is None or ctx.task == "multilabel":
            return {}
        x, y = batch
        eps = self.eps * self.scale(ctx.epoch)
        pgd = PGD(ctx.model, eps, steps=self.check_steps, norm=self.norm, restarts=self.check_restarts,
                  keep="best", seed=derive_seed("fast-check", ctx.epoch) % 2**62)
        fgsm = PGD(ctx.model, eps, steps=1, step_size=1.25 * eps, norm=self.norm, random_start=True,
                   seed=derive_seed("fast-check-fgsm", ctx.epoch) % 2**62)
        x_pgd, x_fgsm = pgd(x, y), fgsm(x, y)
        with torch.no_grad(), attack_mode(ctx.model):
            pgd_acc = float((ctx.model(x_pgd).argmax(1) == y).float().mean())
            fgsm_acc = float((ctx.model(x_fgsm).argmax(1) == y).float().mean())
        prev = ctx.state.get("fast_check_pgd_accuracy")  # in ctx.state: survives a resume
        collapsed = (prev is not None and pgd_acc < prev - self.drop) or (fgsm_acc - pgd_acc > self.gap)
        if collapsed:
            before = "" if prev is None else f" (previous epoch {prev:.2f})"
            msg = (f"catastrophic overfitting in fast adversarial training at epoch {ctx.epoch + 1}: "
                   f"PGD-{self.check_steps} accuracy at eps {eps:.4g} is {pgd_acc:.2f}{before} while FGSM accuracy "
                   f"is {fgsm_acc:.2f}; the model resists only the single-step attack. Use the weights of an "
                   "earlier epoch (early stopping), a smaller step_size or eps, or the 'adversarial' objective.")
            warnings.warn(msg, CatastrophicOverfittingWarning, stacklevel=2)
            log.warning(msg)
        ctx.state["fast_check_pgd_accuracy"] = pgd_acc
        return {"check_pgd_accuracy": pgd_acc, "check_fgsm_accuracy": fgsm_acc,
                "catastrophic_overfitting": float(collapsed)}


@OBJECTIVES.register("free")
class Free(Objective, _Budget):
    """Free adversarial training (Shafahi et al. 2019): each batch is replayed ``replays`` (m)
    times; every replay is one training step on ``clip(x + delta)`` whose single backward also
    gives the input gradient, used to update ``delta <- clip(delta + step * sign(g), -eps, eps)``
    (L2: normalised step, ball projection). ``delta`` persists across batches in
    ``ctx.state["free_delta"]`` (checkpointed). ``step_size`` defaults to eps. Total cost ~ m
    standard steps per batch, so train ``epochs / m`` epochs for the cost of standard training.
    The model stays in training mode (the attack is the training step itself).
    """

    name = "free"

    def __init__(self, eps: float | str, replays: int = 4, step_size: float | str | None = None,
                 norm: str = "linf", warmup_epochs: float = 0) -> None:
        _Budget.__init__(self, eps, step_size, norm, warmup_epochs)
        if replays < 1:
            raise ConfigError(f"objective.replays must be >= 1, got {replays}")
        self.replays = int(replays)

    def _delta(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        d = ctx.state.get("free_delta")
        if not isinstance(d, torch.Tensor) or d.shape[1:] != x.shape[1:]:
            return torch.zeros_like(x)
        d = d.to(device=x.device, dtype=x.dtype)
        if d.shape[0] >= x.shape[0]:
            return d[: x.shape[0]].clone()
        return torch.cat([d, torch.zeros_like(x[d.shape[0]:])])

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        from medxai.attacks.steps import STEPS

        self.check_shape(x)
        s = self.scale(ctx.epoch)
        stepper = STEPS.get(self.norm)()
        eps = torch.tensor(self.eps * s, device=x.device, dtype=x.dtype)
        alpha = eps if self.step_size is None else torch.tensor(self.step_size * s, device=x.device, dtype=x.dtype)
        delta = stepper.project(self._delta(ctx, x), eps)
        total = 0.0
        correct = 0.0
        for _ in range(self.replays):
            delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
            with ctx.autocast():
                logits = ctx.model(x + delta)
                loss = ctx.loss_fn(logits.float(), y)
            ctx.backward_step(loss)  # parameters' step; the same backward filled delta.grad
            if delta.grad is None:
                raise ConfigError("free adversarial training needs backward_step to call loss.backward() "
                                  "(the input gradient comes from the training backward)")
            total += float(loss.detach())
            if ctx.task != "multilabel":
                correct += float((logits.detach().argmax(1) == y).float().mean())
            delta = stepper.project(delta.detach() + stepper.step(delta.grad, alpha), eps)
        ctx.state["free_delta"] = delta.detach()
        extra = {"eps": float(eps)}
        if ctx.task != "multilabel":
            extra["adv_accuracy"] = correct / self.replays
        return StepOutput(loss=total / self.replays, logits=None, n_updates=self.replays, extra=extra)


@OBJECTIVES.register("corruption")
class Corruption(Objective):
    """Corruption training (the fundus study): each sample is, with probability ``p``, replaced by
    one random corruption of ``names`` at a random level of ``levels`` (an int L means 1..L, a pair
    [lo, hi] that range; levels above a corruption's maximum are capped), then a standard step.
    Draws are seeded by (seed, epoch, step). Default names: the fundus study's four faults.
    Training accuracy is measured on the corrupted batch (as for any augmentation).
    """

    name = "corruption"

    def __init__(self, p: float = 0.5, levels: int | list[int] | tuple[int, int] = 4, names: list[str] | None = None,
                 seed: int = 0) -> None:
        from medxai.corruptions import FUNDUS_FAULTS, REGISTRY

        if not 0 <= p <= 1:
            raise ConfigError(f"objective.p must be in [0, 1], got {p}")
        lo, hi = (1, int(levels)) if isinstance(levels, int) else (int(levels[0]), int(levels[-1]))
        if not 1 <= lo <= hi:
            raise ConfigError(f"objective.levels must be L >= 1 or [lo, hi] with 1 <= lo <= hi, got {levels!r}")
        self.names = list(names) if names is not None else list(FUNDUS_FAULTS)
        for n in self.names:
            REGISTRY.get(n)  # unknown names fail here, listing the known ones
        self.p, self.lo, self.hi, self.seed = float(p), lo, hi, int(seed)

    def corrupt(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        from medxai.corruptions import apply, max_severity

        g = torch.Generator().manual_seed(derive_seed("corruption-objective", self.seed, epoch, step) % 2**62)
        b = x.shape[0]
        pick = torch.rand(b, generator=g) < self.p
        kind = torch.randint(len(self.names), (b,), generator=g)
        u = torch.rand(b, generator=g)
        out = x.clone()
        for k, name in enumerate(self.names):
            hi = min(self.hi, max_severity(name))
            lo = min(self.lo, hi)
            level = lo + torch.floor(u * (hi - lo + 1)).long().clamp(max=hi - lo)
            for lev in range(lo, hi + 1):
                idx = (pick & (kind == k) & (level == lev)).nonzero().view(-1)
                if idx.numel():
                    seed = derive_seed("corruption-apply", self.seed, epoch, step, name, lev) % 2**62
                    out[idx.to(x.device)] = apply(x[idx.to(x.device)], name, lev, seed=seed)
        return out

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        xc = self.corrupt(x, ctx.epoch, ctx.step)
        with ctx.autocast():
            logits = ctx.model(xc)
            loss = ctx.loss_fn(logits.float(), y)
        ctx.backward_step(loss)
        return StepOutput(loss=float(loss.detach()), logits=logits.detach().float())


__all__ = ["Adversarial", "CatastrophicOverfittingWarning", "Corruption", "Fast", "Free", "Trades"]
