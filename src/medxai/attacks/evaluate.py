"""Success rate, robust accuracy and prediction-change rate as functions of eps.

Definitions (``definitions.md`` section 3), per eps, over the N evaluated samples:

- ``success_rate``: among samples the model classifies correctly without attack, the share whose
  prediction changes under attack (so it is then wrong).
- ``robust_accuracy``: the share of all samples classified correctly under attack.
- ``prediction_change_rate``: the share of all samples whose prediction under attack differs from
  the clean prediction (ART's ``compute_success``, untargeted).
- ``balanced_success_rate`` / ``balanced_robust_accuracy``: the same averaged over classes
  (classes without a correct clean sample are left out of the balanced success rate).

Work is reused across eps (sorted ascending): an example found within a smaller ball lies in every
larger ball, so a sample fooled at eps_i counts as fooled at every eps_j > eps_i and is not
attacked again. Success is then monotone in eps by construction, and each larger eps only attacks
the samples still standing. At eps = 0 no attack runs: the numbers are the clean evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from medxai._util.seed import derive_seed
from medxai._util.validate import check_images, check_logits
from medxai.attacks._data import iter_batches
from medxai.attacks.budget import check_budget
from medxai.attacks.pgd import PGD, attack_mode
from medxai.attacks.steps import STEPS
from medxai.errors import InputError

SCHEDULES = ("auto", "sequential", "batched")
METRICS = ("success_rate", "robust_accuracy", "prediction_change_rate", "balanced_success_rate",
           "balanced_robust_accuracy")


def _make_attack(model: nn.Module, eps: float, attack: str, **kw: Any):
    if attack == "pgd":
        return PGD(model, eps, **kw)
    if attack in ("apgd-ce", "apgd-dlr"):
        from medxai.attacks.apgd import APGD

        for name in ("step_size", "random_start", "keep"):
            kw.pop(name, None)
        if kw.pop("loss") != "ce":
            raise InputError("APGD attacks single-label models (loss='ce')")
        return APGD(model, eps, loss=attack.split("-")[1], **kw)
    raise InputError(f"attack must be 'pgd', 'apgd-ce', 'apgd-dlr' or 'auto', got {attack!r}")


def _adv_predict(atk: Any, lab: _Labels, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Predictions at the attack's points (from the attack's own logits when it kept them: PGD keep="best")."""
    x_adv = atk(x, y)
    z_adv = getattr(atk, "adv_logits", None)
    if z_adv is None or z_adv.shape[0] != x_adv.shape[0]:
        with torch.no_grad(), attack_mode(atk.model):
            z_adv = atk.model(x_adv)
    return lab.predict(z_adv)


def _merge(lab: _Labels, state: tuple[torch.Tensor, ...], idx: torch.Tensor, p_adv: torch.Tensor, y: torch.Tensor,
           p0: torch.Tensor) -> None:
    """Fold the predictions ``p_adv`` of rows ``idx`` into (pred, wrong, changed), in place: a wrong
    prediction is kept over a right one, wrong and changed only grow."""
    pred, wrong, changed = state
    w_adv = lab.wrong(p_adv, y)
    take = w_adv | ~wrong[idx]
    pred[idx] = torch.where(take.view(-1, *([1] * (p_adv.ndim - 1))), p_adv, pred[idx])
    wrong[idx] = wrong[idx] | w_adv
    changed[idx] = changed[idx] | lab.differ(p_adv, p0)


def _sweep(x: torch.Tensor, y: torch.Tensor, pred0: torch.Tensor, lab: _Labels, eps_sorted: list[float],
           attacks: list[str], make: Callable[..., Any], reuse: bool, attacked: list[int]) -> list[tuple]:
    """Eps by eps: per eps (pred, changed) of the batch; with ``reuse`` a sample fooled at a smaller eps
    keeps that result and is not attacked again."""
    state = (pred0.clone(), lab.wrong(pred0, y), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
    out = []
    for ei, eps in enumerate(eps_sorted):
        if not reuse:
            state = (pred0.clone(), lab.wrong(pred0, y), torch.zeros_like(state[2]))
        for name in attacks if eps > 0 else ():
            todo = ~(state[1] & state[2])
            if not bool(todo.any()):
                break
            idx = todo.nonzero().view(-1)
            p_adv = _adv_predict(make(eps, name, eps), lab, x[idx], y[idx])
            attacked[ei] += int(idx.numel())
            _merge(lab, state, idx, p_adv, y[idx], pred0[idx])
        out.append((state[0].clone(), state[2].clone()))
    return out


def _sweep_batched(x: torch.Tensor, y: torch.Tensor, pred0: torch.Tensor, lab: _Labels, eps_sorted: list[float],
                   attacks: list[str], make: Callable[..., Any], reuse: bool, attacked: list[int]) -> list[tuple]:
    """Every (eps > 0, sample) pair in one call per attack, with per-pair budgets; then, with ``reuse``,
    ``_sweep``'s rule across eps (a pair fooled at a smaller eps passes its result on). A later attack
    runs only on the pairs still standing (not fooled at that eps or a smaller one)."""
    n, pos = x.shape[0], [ei for ei, e in enumerate(eps_sorted) if e > 0]
    m = len(pos)
    rep = (m,) + (1,) * (pred0.ndim - 1)
    state = (pred0.repeat(*rep), lab.wrong(pred0, y).repeat(m), torch.zeros(m * n, dtype=torch.bool, device=x.device))
    budget = torch.tensor([eps_sorted[ei] for ei in pos], dtype=x.dtype, device=x.device).repeat_interleave(n)
    sample = torch.arange(n, device=x.device).repeat(m)
    for name in attacks if m else ():
        done = (state[1] & state[2]).view(m, n)
        if reuse:
            done = done.cummax(0).values
        idx = (~done).view(-1).nonzero().view(-1)
        if idx.numel() == 0:
            break
        rows = sample[idx]
        _merge(lab, state, idx, _adv_predict(make(budget[idx], name, "batched"), lab, x[rows], y[rows]), y[rows],
               pred0[rows])
        for j, ei in enumerate(pos):
            attacked[ei] += int(((idx >= j * n) & (idx < (j + 1) * n)).sum())
    per = [(s.view(m, n, *s.shape[1:]) if m else s) for s in state]
    out, prev = [], (pred0.clone(), lab.wrong(pred0, y), torch.zeros(n, dtype=torch.bool, device=x.device))
    for ei in range(len(eps_sorted)):
        if ei in pos:
            j = pos.index(ei)
            cur = (per[0][j].clone(), per[1][j].clone(), per[2][j].clone())
            if reuse:  # _sweep's rule: a fooled sample keeps its result; else the new prediction unless it is
                fooled = prev[1] & prev[2]  # right and the earlier one wrong; wrong and changed only grow
                take = (cur[1] | ~prev[1]) & ~fooled
                cur = (torch.where(take.view(-1, *([1] * (pred0.ndim - 1))), cur[0], prev[0]), cur[1] | prev[1],
                       cur[2] | prev[2])
            prev = cur
        out.append((prev[0].clone(), prev[2].clone()))
    return out


def _check_budgets(eps: list[float], step_size: float | None, norm: str, shape: tuple[int, ...] | None) -> None:
    for e in eps:
        check_budget(e, norm, shape)
    if step_size is not None:
        check_budget(step_size, norm, shape, what="step_size")


class _Labels:
    """What "prediction", "wrong" and "changed" mean for one kind of output."""

    def __init__(self, loss: str, label: int | None) -> None:
        self.loss, self.label = loss, label
        self.multi = loss == "bce" and label is None

    def targets(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets used for metrics, rows to keep)."""
        if self.loss == "ce":
            if y.ndim != 1 or y.is_floating_point():
                raise InputError(f"labels must be (B,) class indices for loss='ce', got {y.dtype} {tuple(y.shape)}")
            return y.long(), torch.ones_like(y, dtype=torch.bool)
        y = y.float()
        if self.label is not None:
            yk = y[:, self.label] if y.ndim == 2 else y
            keep = (yk == 0) | (yk == 1)
            return yk, keep
        if y.ndim != 2:
            raise InputError(f"multilabel targets must be (B, K), got {tuple(y.shape)}")
        return y, ((y == 0) | (y == 1)).any(1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return logits.argmax(1)
        z = logits[:, self.label] if self.label is not None else logits
        return (z > 0).long()

    def wrong(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.multi:
            return pred != y.long()
        known = (y == 0) | (y == 1)
        return (known & (pred != y)).any(1)

    def differ(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a != b).any(1) if self.multi else a != b


def _bal_acc(y: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's balanced accuracy (mean recall over the classes present in y); an attack may
    produce predictions of classes absent from y, which is expected here (no warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(balanced_accuracy_score(y, pred))


def _balanced(y: np.ndarray, pred0: np.ndarray, pred: np.ndarray, multi: bool) -> tuple[float, float]:
    """(balanced success rate, balanced robust accuracy); multilabel: means over labels."""
    if not multi:
        correct = pred0 == y
        rates = [float((pred[(y == c) & correct] != c).mean()) for c in np.unique(y) if ((y == c) & correct).any()]
        return (float(np.mean(rates)) if rates else 0.0), _bal_acc(y, pred)
    succ, bal = [], []
    for k in range(y.shape[1]):
        known = (y[:, k] == 0) | (y[:, k] == 1)
        if not known.any():
            continue
        yk, p0, pk = y[known, k].astype(int), pred0[known, k], pred[known, k]
        s, _ = _balanced(yk, p0, pk, False)
        if (p0 == yk).any():
            succ.append(s)
        bal.append(_bal_acc(yk, pk))
    return (float(np.mean(succ)) if succ else 0.0), (float(np.mean(bal)) if bal else 0.0)


def evaluate(model: nn.Module, data: Any, eps_list: list[float] | tuple[float, ...], norm: str = "linf",
             steps: int = 10, step_size: float | None = None, *, attack: str | list[str] = "pgd",
             random_start: bool = True, restarts: int = 1, keep: str = "best", task: str | None = None,
             label: int | None = None, batch_size: int = 64, limit: int | None = None, seed: int = 0,
             device: torch.device | str | None = None, reuse: bool = True,
             clean_logits: torch.Tensor | None = None, schedule: str = "auto") -> dict[str, Any]:
    """Attack ``model`` on ``data`` at every eps in ``eps_list`` and report the robustness numbers.

    Args:
        model: [0, 1] images -> logits (B, K) (binary: K = 2).
        data: (x, y) tensors, a dataset of {"image", "label"} items, or an iterable of batches.
        eps_list: budgets in pixel units (e.g. ``[0, 0.2/255, 0.4/255]``); sorted ascending.
        norm, steps, step_size, random_start, restarts, keep: as in ``PGD`` (``step_size=None`` is
            ``2.5 * eps / steps`` at each eps). ``attack``: "pgd", "apgd-ce", "apgd-dlr" (K >= 3;
            Croce & Hein 2020) or "auto" (``apgd.attack_list(K)`` in turn: a sample counts as fooled
            if any attack fools it), or a list of these names.
        task: "multilabel" attacks with BCE: over all labels (a sample is correct when every
            labelled output is right, fooled when any flips; balanced numbers are means over labels)
            or, with ``label=k``, output k alone (rows without a 0/1 label for k are skipped).
            Anything else (binary, multiclass, ordinal, None): softmax CE on (B,) class indices.
        reuse: count samples fooled at a smaller eps as fooled at larger eps and skip them (sound,
            and cheaper). ``False`` attacks every sample at every eps independently.
        clean_logits: (N, K) logits of ``data``'s images in order, when the caller already has them
            (the audit's shared clean forward): no clean forward is run.
        schedule: "sequential" attacks eps by eps (with ``reuse``, only the samples still standing: the
            fewest model passes); "batched" attacks every (sample, eps > 0) pair of a batch in one call
            with per-sample budgets (more passes, fewer and larger calls: a GPU's choice), then applies
            ``reuse``'s rule across eps, so both give the same numbers for a deterministic attack;
            "auto": batched on CUDA, sequential elsewhere.
        seed: random starts are seeded per batch, eps and attack from it (reproducible).

    Returns:
        A JSON-ready dict: ``eps`` (ascending) and, per eps, lists ``success_rate``,
        ``robust_accuracy``, ``prediction_change_rate``, ``balanced_success_rate``,
        ``balanced_robust_accuracy``, ``attacked`` (samples attacked at that eps); and
        ``clean_accuracy``, ``balanced_clean_accuracy``, ``n``, ``n_correct``, ``norm``, ``steps``,
        ``attack``, ``settings``. At eps = 0 ``robust_accuracy`` is the clean accuracy.
    """
    eps_sorted = sorted(float(e) for e in eps_list)
    if not eps_sorted or eps_sorted[0] < 0:
        raise InputError(f"eps_list must be a non-empty list of budgets >= 0, got {list(eps_list)}")
    STEPS.get(norm)  # an unknown norm fails before any work, listing the known ones
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    _check_budgets(eps_sorted, step_size, norm, None)  # Linf above 1, L2 above 1000: before any work
    loss = "bce" if task == "multilabel" else "ce"
    lab = _Labels(loss, label)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    ne = len(eps_sorted)
    ys: list[np.ndarray] = []
    pred0_l: list[np.ndarray] = []
    preds_l: list[list[np.ndarray]] = [[] for _ in eps_sorted]
    changed_l: list[list[np.ndarray]] = [[] for _ in eps_sorted]
    attacked = [0] * ne
    attacks: list[str] | None = None

    offset = 0
    for bi, (x, y) in enumerate(iter_batches(data, batch_size, device, limit)):
        check_images(x, "data images", ndim=(4, 5))  # images or volumes (B, C, D, H, W)
        start, offset = offset, offset + x.shape[0]
        if clean_logits is not None and offset > clean_logits.shape[0]:
            raise InputError(f"clean_logits has {clean_logits.shape[0]} rows but data has at least {offset} images")
        if bi == 0:  # L2 budgets against the diameter of the unit cube of these images, before attacking
            _check_budgets(eps_sorted, step_size, norm, tuple(x.shape[1:]))
        y, rows = lab.targets(y)
        if not bool(rows.all()):
            x, y = x[rows], y[rows]
        if x.shape[0] == 0:
            continue
        if clean_logits is not None:  # the caller's clean forward of these rows
            logits0 = check_logits(clean_logits[start:offset], offset - start).to(x.device)[rows.to(x.device)]
        else:
            with torch.no_grad(), attack_mode(model):
                logits0 = model(x)
        pred0 = lab.predict(logits0)
        if attacks is None:
            from medxai.attacks.apgd import attack_list

            if isinstance(attack, str):
                attacks = attack_list(logits0.shape[1]) if attack == "auto" else [attack]
            else:
                attacks = list(attack)
        def make(eps: float | torch.Tensor, name: str, key: Any, bi: int = bi):
            return _make_attack(model, eps, name, steps=steps, step_size=step_size, norm=norm,
                                random_start=random_start, restarts=restarts, keep=keep, loss=loss,
                                label=label, seed=derive_seed("evaluate", seed, bi, key, name) % 2**62)

        batched = schedule == "batched" or (schedule == "auto" and x.device.type == "cuda")
        sweep = _sweep_batched if batched else _sweep
        for ei, (pred, changed) in enumerate(sweep(x, y, pred0, lab, eps_sorted, attacks, make, reuse, attacked)):
            preds_l[ei].append(pred.cpu().numpy())
            changed_l[ei].append(changed.cpu().numpy())
        ys.append(y.cpu().numpy())
        pred0_l.append(pred0.cpu().numpy())
    if not ys:
        raise InputError("data yielded no samples")
    y_all = np.concatenate(ys)
    pred0_all = np.concatenate(pred0_l)
    t = torch.from_numpy

    def wrong_np(p: np.ndarray) -> np.ndarray:
        return lab.wrong(t(p), t(y_all)).numpy()

    correct = ~wrong_np(pred0_all)
    _, bal_clean = _balanced(y_all, pred0_all, pred0_all, lab.multi)
    out: dict[str, Any] = {"eps": eps_sorted, **{m: [] for m in METRICS}, "attacked": attacked,
                           "clean_accuracy": float(correct.mean()), "balanced_clean_accuracy": bal_clean,
                           "n": len(y_all), "n_correct": int(correct.sum()), "norm": norm, "steps": steps,
                           "attack": "+".join(attacks or []), "task": task,
                           "settings": {"step_size": step_size, "random_start": random_start, "restarts": restarts,
                                        "keep": keep, "label": label, "seed": seed, "reuse": reuse,
                                        "schedule": schedule}}
    for ei in range(ne):
        p = np.concatenate(preds_l[ei])
        ch = np.concatenate(changed_l[ei])
        fooled = correct & wrong_np(p)
        bal_succ, bal_rob = _balanced(y_all, pred0_all, p, lab.multi)
        out["success_rate"].append(float(fooled.sum() / correct.sum()) if correct.any() else 0.0)
        out["robust_accuracy"].append(float((~wrong_np(p)).mean()))
        out["prediction_change_rate"].append(float(ch.mean()))
        out["balanced_success_rate"].append(bal_succ)
        out["balanced_robust_accuracy"].append(bal_rob)
    return out
