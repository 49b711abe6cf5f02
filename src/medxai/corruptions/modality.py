"""Imaging modalities' own artefacts: MRI (k-space motion, ghosting, spike,
Gibbs, bias field, Rician noise), speckle, dermoscopy, histopathology.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
