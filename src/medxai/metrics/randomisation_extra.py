"""More randomisation metrics: random-logit test, smooth MPRT, efficient MPRT; Focus.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
