"""Methods built from others: NoiseTunnel (any method), Guided Grad-CAM, Deconvnet.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
