"""Minimum-norm attacks: Carlini-Wagner L2 and DeepFool; per-image robustness radius.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
