"""Adversarial attacks and robustness curves.

- ``PGD(model, eps, steps=10, norm="linf" | "l2", ...)(x, y) -> x_adv`` and ``FGSM``: input-only
  gradients, model in eval mode during the attack and restored, per-sample eps, multilabel via BCE.
- ``APGD`` (Croce & Hein 2020) with ``attack_list(K)`` of the APGD attacks valid for K classes.
- ``evaluate(model, data, eps_list, norm, steps)`` -> a JSON-ready dict: success rate, robust
  accuracy, prediction-change rate (ART) and balanced variants per eps, reusing work across eps.
- ``STEPS``: the per-norm step objects (random_perturb / step / project).
- ``parse_eps("2.5/255")``, ``parse_eps_list("0.2/255,0.4/255")``: budgets from text (no eval).
"""

from medxai.attacks import autoattack, minnorm  # noqa: F401  (filled by issue 18)
from medxai.attacks.apgd import APGD, attack_list, dlr_loss
from medxai.attacks.budget import format_eps, parse_eps, parse_eps_list
from medxai.attacks.evaluate import METRICS, evaluate
from medxai.attacks.pgd import FGSM, PGD, attack_mode
from medxai.attacks.steps import STEPS, AttackStep, L2Step, LinfStep

__all__ = [
    "APGD",
    "FGSM",
    "METRICS",
    "PGD",
    "STEPS",
    "AttackStep",
    "L2Step",
    "LinfStep",
    "attack_list",
    "attack_mode",
    "dlr_loss",
    "evaluate",
    "format_eps",
    "parse_eps",
    "parse_eps_list",
]
