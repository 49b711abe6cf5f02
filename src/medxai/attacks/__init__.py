"""Adversarial attacks and robustness curves.

- ``PGD(model, eps, steps=10, norm="linf" | "l2", ...)(x, y) -> x_adv`` and ``FGSM``: input-only
  gradients, model in eval mode during the attack and restored, per-sample eps, multilabel via BCE.
- ``APGD`` (Croce & Hein 2020) with ``attack_list(K)`` of the APGD attacks valid for K classes;
  ``APGDT`` (targeted DLR; the targeted margin for K < 4, where DLR's 3rd / 4th logits do not exist).
- ``AutoAttack(model, eps, norm).run(x, y)``: the standard ensemble APGD-CE -> APGD-T -> FAB-T -> Square
  on the still-robust images; the result says which attack broke each image and which ran.
- ``DeepFool``, ``CarliniWagnerL2`` (minimum-norm attacks) and ``robustness_radius(model, x, y, norm)``:
  each image's smallest adversarial perturbation in pixel units, with a summary for the report.
- ``evaluate(model, data, eps_list, norm, steps)`` -> a JSON-ready dict: success rate, robust
  accuracy, prediction-change rate (ART) and balanced variants per eps, reusing work across eps.
- ``STEPS``: the per-norm step objects (random_perturb / step / project).
- ``parse_eps("2.5/255")``, ``parse_eps_list("0.2/255,0.4/255")``: budgets from text (no eval).
"""

from medxai.attacks.apgd import APGD, APGDT, attack_list, dlr_loss, targeted_dlr_loss, targeted_margin_loss
from medxai.attacks.autoattack import FAB, AutoAttack, AutoAttackResult, Square
from medxai.attacks.budget import format_eps, parse_eps, parse_eps_list
from medxai.attacks.evaluate import METRICS, evaluate
from medxai.attacks.minnorm import CarliniWagnerL2, DeepFool, RadiusResult, robustness_radius
from medxai.attacks.pgd import FGSM, PGD, attack_mode
from medxai.attacks.steps import STEPS, AttackStep, L2Step, LinfStep

__all__ = [
    "APGD",
    "APGDT",
    "FAB",
    "FGSM",
    "METRICS",
    "PGD",
    "STEPS",
    "AttackStep",
    "AutoAttack",
    "AutoAttackResult",
    "CarliniWagnerL2",
    "DeepFool",
    "L2Step",
    "LinfStep",
    "RadiusResult",
    "Square",
    "attack_list",
    "attack_mode",
    "dlr_loss",
    "evaluate",
    "format_eps",
    "parse_eps",
    "parse_eps_list",
    "robustness_radius",
    "targeted_dlr_loss",
    "targeted_margin_loss",
]
