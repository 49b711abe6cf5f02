"""Label vocabularies: CheXpert's findings and its uncertainty policies (Irvin et al. 2019).

CheXpert labels are 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned). A policy
turns them into training targets: blanks always become 0; uncertain becomes 0 (``zeros``, U-Zeros),
1 (``ones``, U-Ones), NaN = ignored in the loss (``ignore``, U-Ignore) or a soft label drawn
uniformly in [0.55, 0.85] and rounded to 2 decimals (``random``, U-Random).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medxai._util.seed import derive_seed
from medxai.errors import ConfigError

#: The 14 observations of CheXpert's CSV files, in their column order.
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
#: The five findings CheXpert is usually evaluated on (the competition tasks), in the order medxai uses.
CHEXPERT_FIVE: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAINTY_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore", "random")
#: U-Random draws soft labels uniformly in this interval.
RANDOM_RANGE: tuple[float, float] = (0.55, 0.85)

__all__ = ["CHEXPERT_FINDINGS", "CHEXPERT_FIVE", "RANDOM_RANGE", "UNCERTAINTY_POLICIES", "apply_uncertainty",
           "resolve_findings"]


def resolve_findings(findings: str | Sequence[str]) -> list[str]:
    """``"five"`` (default set), ``"all"`` / ``"14"`` (every observation) or an explicit list of names."""
    if isinstance(findings, str):
        key = findings.lower()
        if key == "five":
            return list(CHEXPERT_FIVE)
        if key in ("all", "14"):
            return list(CHEXPERT_FINDINGS)
        findings = [findings]
    names = [str(f) for f in findings]
    if not names:
        raise ConfigError("findings: give at least one finding name, 'five' or 'all'")
    if len(set(names)) != len(names):
        raise ConfigError(f"findings: duplicate names in {names}")
    return names


def apply_uncertainty(raw: np.ndarray, policy: str, *, names: Sequence[str], keys: Sequence[str],
                      seed: int = 0) -> np.ndarray:
    """CheXpert raw labels (N, K) in {1, 0, -1, NaN} -> float32 targets (N, K) under ``policy``.

    Blanks (NaN) -> 0 under every policy. ``random``: every uncertain entry gets its own value
    ``round(0.55 + 0.30 * u, 2)`` with ``u`` uniform in [0, 1) drawn once from a hash of
    ``(seed, key, finding name)``, so the value of an entry does not depend on which other rows or
    findings were loaded, nor on their order; same seed, same values. ``keys`` name the rows
    (the image path or id). ``ignore`` leaves NaN, which losses and metrics must skip.
    """
    if policy not in UNCERTAINTY_POLICIES:
        raise ConfigError(f"uncertainty policy must be one of {UNCERTAINTY_POLICIES}, got {policy!r}")
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(names) or raw.shape[0] != len(keys):
        raise ConfigError(f"raw labels of shape {raw.shape} do not match {len(keys)} keys x {len(names)} names")
    out = np.where(np.isnan(raw), np.float32(0.0), raw).astype(np.float32)
    unc = raw == -1
    if policy == "zeros":
        out[unc] = 0.0
    elif policy == "ones":
        out[unc] = 1.0
    elif policy == "ignore":
        out[unc] = np.nan
    else:
        lo, hi = RANDOM_RANGE
        for i, j in zip(*np.nonzero(unc), strict=True):
            u = (derive_seed(int(seed), keys[i], names[j]) >> 11) / float(2**52)  # 52 random bits, [0, 1)
            out[i, j] = round(lo + (hi - lo) * u, 2)
    return out
