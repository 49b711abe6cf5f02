"""CAM variants beyond Grad-CAM(++): HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM, AblationCAM, FullGrad.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
