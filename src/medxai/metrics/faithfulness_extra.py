"""More faithfulness metrics: faithfulness correlation, monotonicity correlation, IROF, selectivity, sufficiency.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
