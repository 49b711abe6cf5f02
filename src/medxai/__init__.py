"""medxai: audit medical image classifiers for robustness and for what their explanations look at.

``medxai.audit(models={...}, data=..., out=...)`` runs the whole audit from Python (see
``medxai.pipeline.api``); the command line is ``medxai audit``.
"""

from typing import Any

from medxai._version import __version__

__all__ = ["__version__", "audit"]


def audit(*args: Any, **kwargs: Any) -> Any:
    """``medxai.pipeline.api.audit`` (imported on first use: torch and MONAI take seconds to import)."""
    from medxai.pipeline.api import audit as _audit

    return _audit(*args, **kwargs)
