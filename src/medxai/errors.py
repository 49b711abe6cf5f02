"""Errors medxai raises on purpose. Each names the file or argument and the problem."""

from __future__ import annotations

from pathlib import Path


class MedxaiError(Exception):
    """Base of every error medxai raises deliberately; the CLI prints it as one line (exit 2)."""


class DataError(MedxaiError, ValueError):
    """A data file or record is missing, empty, truncated, undecodable or inconsistent.

    ``path`` names the file (or dataset root) and ``reason`` says what is wrong with it.
    """

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ConfigError(MedxaiError, ValueError):
    """A configuration file or option is invalid; the message names the key."""


class InputError(MedxaiError, ValueError):
    """A tensor given to a public API breaks its contract (range, shape, NaN/Inf, target)."""


class CheckpointError(MedxaiError, ValueError):
    """A checkpoint cannot be read safely or does not fit the model."""


class ModelError(MedxaiError, ValueError):
    """A model file or model card cannot be loaded safely, or does not fit its card or the data."""
