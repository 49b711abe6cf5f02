"""Standard AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square; the binary substitute.

Placeholder: filled in by issue 18."""

from __future__ import annotations

__all__: list[str] = []
