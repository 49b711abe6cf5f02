"""DeepLIFT (Shrikumar et al. 2017), rescale rule.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
