"""SHAP-family attributions: GradientSHAP and KernelSHAP (Lundberg & Lee 2017).

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
