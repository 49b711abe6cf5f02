"""Attack budgets written as people write them: ``8/255``, ``0.5``, ``"0.2/255,0.4/255"``, read
(``parse_eps``), checked against the norm and the image size (``check_budget``) and printed
(``format_eps``, the one label of the CLI, the plots and the report).

Budgets are pixel units of [0, 1] images: a Linf budget above 1 changes nothing more than 1 does
(it is almost always ``8`` meant as ``8/255``), and an L2 budget larger than the diameter of the
unit cube, ``sqrt(C * H * W)``, holds every image of that shape. ``parse_eps`` alone does not know
the norm, so it refuses only what no norm allows (above ``MAX_EPS`` = 1000); callers that know
the norm (``medxai.attacks.evaluate``, the training objectives) call ``check_budget``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from medxai.errors import ConfigError

MAX_EPS = 1000.0  # above this no budget of [0, 1] images makes sense (L2 of a 1000 x 1000 RGB image: 1732)


def _shown(eps: float) -> str:
    return f"{eps:.6g}"


def check_budget(eps: float, norm: str = "linf", image_shape: Sequence[int] | None = None, *,
                 what: str = "eps") -> float:
    """Return ``eps`` if it can be a budget of ``norm`` on [0, 1] images of ``image_shape`` (C, H, W).

    Refused with ``ConfigError``: Linf above 1 ("did you mean 8/255?"), L2 above ``MAX_EPS``, and,
    when the shape is known, L2 above the diameter ``sqrt(C * H * W)`` of the unit cube. ``what``
    names the value in the message (``eps``, ``step_size``, ``objective.eps``...)."""
    if norm == "linf" and eps > 1:
        raise ConfigError(f"{what} {_shown(eps)} is above 1 (images are in [0, 1]): did you mean "
                          f"{_shown(eps)}/255?")
    if norm == "l2":
        if eps > MAX_EPS:
            raise ConfigError(f"{what} {_shown(eps)} (L2) is above {MAX_EPS:g}: budgets are in pixel units of "
                              "[0, 1] images (e.g. 0.5 or 3.0)")
        if image_shape is not None and len(image_shape):
            dims = [int(d) for d in image_shape]
            diameter = math.sqrt(math.prod(dims))
            if eps > diameter:
                raise ConfigError(f"{what} {_shown(eps)} (L2) is larger than {diameter:.4g}, the diameter of the "
                                  f"unit cube of {'x'.join(map(str, dims))} images (sqrt(C*H*W)): that ball holds "
                                  "every image; budgets are in pixel units of [0, 1] images (e.g. 0.5 or 3.0)")
    return eps


def parse_eps(value: float | int | str, norm: str | None = None, image_shape: Sequence[int] | None = None) -> float:
    """A budget in pixel units from a number or a string ``"a"`` / ``"a/b"`` (no eval).

    Above ``MAX_EPS`` is refused for any norm; with ``norm`` (and ``image_shape``) the budget is
    also checked by ``check_budget`` (Linf above 1 is refused)."""
    if isinstance(value, bool):
        raise ConfigError(f"eps must be a number or 'a/b', got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        text = str(value).strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                out = float(Fraction(num.strip())) / float(Fraction(den.strip()))
            else:
                out = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"eps must be a number or 'a/b' (e.g. 2.5/255), got {value!r}") from None
    if not out >= 0 or out == float("inf"):
        raise ConfigError(f"eps must be finite and >= 0, got {value!r}")
    if out > MAX_EPS:
        raise ConfigError(f"eps {_shown(out)} is above {MAX_EPS:g}: budgets are in pixel units of [0, 1] images "
                          f"(Linf at most 1, e.g. {_shown(out)}/255; L2 e.g. 0.5 or 3.0)")
    if norm is not None:
        check_budget(out, norm, image_shape)
    return out


def parse_eps_list(value: str | list | tuple, norm: str | None = None,
                   image_shape: Sequence[int] | None = None) -> list[float]:
    """``"0,0.2/255,0.4/255"`` or a list of numbers / strings -> floats (each as ``parse_eps``)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v for v in items if not (isinstance(v, str) and not v.strip())]
    if not items:
        raise ConfigError("the eps list is empty")
    return [parse_eps(v, norm, image_shape) for v in items]


def format_eps(eps: float, norm: str = "linf") -> str:
    """The label of a budget: Linf as intensity levels ``k/255`` where k has at most two decimals
    (``0.25/255``, ``8/255``), else 4 significant digits; L2 (any other norm) a plain number
    (``0.5``: an L2 radius is not a grey level)."""
    if eps == 0:
        return "0"
    if norm == "linf":
        k = eps * 255
        if abs(k - round(k, 2)) < 1e-6:
            return f"{round(k, 2):g}/255"
    return f"{eps:.4g}"
