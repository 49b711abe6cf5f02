"""Image corruptions for robustness tables: ``apply(x, name, severity, seed=None)``.

Batched torch on the input's device, x (B, C, H, W) in [0, 1]. Names (``list_corruptions()``):
the fundus study's camera faults ``motion_blur``, ``light_leakage``, ``underexposure``,
``overexposure`` (levels 1-4), and ``gaussian_noise``,
``shot_noise``, ``impulse_noise``, ``defocus_blur``, ``gaussian_blur``, ``brightness``,
``contrast``, ``gamma``, ``jpeg``, ``pixelate``, ``haze`` (1-5); and the modalities' own artefacts
(``MODALITIES``, run only when named or asked for by kind: ``list_corruptions("mri")``): MRI
``kspace_motion``, ``ghosting``, ``spike``, ``gibbs``, ``bias_field``, ``rician_noise``; ultrasound /
OCT ``speckle``; dermoscopy ``black_corners``, ``ink_marks``, ``hair``; histology
``stain_variation``, ``bubbles`` (docs/artefacts.md). Each function's docstring gives its formula
and table; spatial parameters scale with the image size (tables at 224 px).
"""

from medxai.corruptions import blur, digital, fundus, modality, noise, photometric  # noqa: F401  (register)
from medxai.corruptions.base import (
    MODALITIES,
    REGISTRY,
    Corruption,
    apply,
    list_corruptions,
    max_severity,
    size_scale,
)
from medxai.corruptions.fundus import field_of_view
from medxai.corruptions.gallery import example_fundus, gallery
from medxai.corruptions.modality import example_image, modality_gallery
from medxai.corruptions.plots import plot_drops
from medxai.corruptions.table import CORRUPTION_METRICS, corruption_table, headline, relative_ce

#: The fundus study's four camera faults.
FUNDUS_FAULTS = ("motion_blur", "light_leakage", "underexposure", "overexposure")

__all__ = [
    "CORRUPTION_METRICS",
    "FUNDUS_FAULTS",
    "MODALITIES",
    "REGISTRY",
    "Corruption",
    "apply",
    "corruption_table",
    "example_fundus",
    "example_image",
    "field_of_view",
    "gallery",
    "headline",
    "list_corruptions",
    "max_severity",
    "modality_gallery",
    "plot_drops",
    "relative_ce",
    "size_scale",
]
