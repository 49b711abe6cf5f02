"""medxai: audit medical image classifiers for robustness and for what their explanations look at."""

__version__ = "0.1.0"
