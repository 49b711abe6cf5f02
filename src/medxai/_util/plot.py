"""Figures whose labels come from data."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def plain_text(fn: F) -> F:
    """Draw with matplotlib's mathtext off: labels come from data (class, model, method names) and a
    ``$`` in them must show as itself, not be parsed as TeX (which raises on unbalanced input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
