"""Explanation robustness: max- / average-sensitivity, local Lipschitz estimate,
relative input / output stability, infidelity.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
