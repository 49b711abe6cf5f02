"""Layer-wise relevance propagation for CNNs: epsilon, gamma, alpha-beta rules, composites, BatchNorm canonizers.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
