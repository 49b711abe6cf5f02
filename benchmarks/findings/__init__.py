"""The five reproduced studies' claims measured on their synthetic stand-ins (issue 17, findings).

``python -m benchmarks.findings [--quick] [--only STUDY ...]`` (``make findings``): each study runs its
example config through ``medxai.pipeline.audit.run_audit(load_config(raw), out, synthetic=True)`` at a
stated size, writes ``benchmarks/results/findings/STUDY.json`` (quick: ``.../findings/quick/``) and
regenerates ``docs/findings.md`` (quick: ``.../findings/quick/findings.md``) from every results JSON
present. Not part of ``make bench`` or ``make test`` (the full studies take up to ~30 min each on two
cores); ``tests/test_findings.py`` runs one study's quick mode.

Studies: ``000_skin`` (adversarial training and saliency), ``001_pneumonia`` (Grad-CAM vs LIME and the
marker), ``002_vit`` (attention maps across initialisations), ``003_fundus`` (corruption and
adversarial training, IG baselines), ``004_chexpert`` (multilabel AUC, top-3 Grad-CAM and LIME).
"""

from __future__ import annotations

import importlib
from typing import Any

STUDIES = {"000_skin": "skin", "001_pneumonia": "pneumonia", "002_vit": "vit", "003_fundus": "fundus",
           "004_chexpert": "chexpert"}


def study_module(name: str) -> Any:
    """The module of a study, by its key (``001_pneumonia``) or short name (``pneumonia``)."""
    short = STUDIES.get(name, name)
    if short not in STUDIES.values():
        raise KeyError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return importlib.import_module(f"benchmarks.findings.{short}")
