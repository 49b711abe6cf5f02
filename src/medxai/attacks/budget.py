"""Attack budgets written as people write them: ``8/255``, ``0.5``, ``"0.2/255,0.4/255"``, read
(``parse_eps``) and printed (``format_eps``, the one label of the CLI, the plots and the report)."""

from __future__ import annotations

from fractions import Fraction

from medxai.errors import ConfigError


def parse_eps(value: float | int | str) -> float:
    """A budget in pixel units from a number or a string ``"a"`` / ``"a/b"`` (no eval)."""
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
    return out


def parse_eps_list(value: str | list | tuple) -> list[float]:
    """``"0,0.2/255,0.4/255"`` or a list of numbers / strings -> floats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v for v in items if not (isinstance(v, str) and not v.strip())]
    if not items:
        raise ConfigError("the eps list is empty")
    return [parse_eps(v) for v in items]


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
