"""The registry of explanation methods by name (``medxai.explain.REGISTRY``)."""

from __future__ import annotations

from medxai._util.registry import Registry

REGISTRY: Registry[type] = Registry("explanation method")
