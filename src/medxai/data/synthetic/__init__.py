"""Synthetic medical imaging studies whose labels are caused by localised lesions with known masks."""

from medxai.data.synthetic import cxr, fundus, skin  # noqa: F401  (register the studies)
from medxai.data.synthetic._api import STUDY_REGISTRY, generate, generate_one
from medxai.data.synthetic._base import SyntheticStudy

STUDIES: tuple[str, ...] = tuple(STUDY_REGISTRY.names())

__all__ = ["STUDIES", "SyntheticStudy", "generate", "generate_one"]
