"""The ViT medical study's training hyperparameters as named presets, and ViT initialisations.

Source: the "Hyperparameter Settings" table of the study's repository ("Are attention maps a
solution to the interpretability crisis in AI-assisted medical imaging?", ``attention_maps``):
ViT-B/16 on CP-Child, DUKE, Kvasir and MURA from four initialisations (random, supervised
ImageNet, DINO, MAE); optimizer, learning rate, momentum, weight decay, CosineAnnealing, total
epochs, batch size, and the epoch kept by model selection on the validation loss ("saved epoch").

``vit_preset(dataset, init)`` returns ``medxai.train.TrainConfig`` keys. What the table does not
say, and what we assumed:
- Adam's "momentum 0.9" is beta1; beta2 is PyTorch's default 0.999; its weight decay is Adam's
  coupled L2 term (``torch.optim.Adam(weight_decay=...)``, optimizer "adam", not AdamW).
- SGD without Nesterov (PyTorch's default).
- "CosineAnnealing" decays from ``lr`` to 0 over all epochs without warm-up (PyTorch's
  ``CosineAnnealingLR(T_max=epochs)``, eta_min 0); medxai's cosine steps per iteration, the
  smooth version of the per-epoch schedule.
- The saved epoch is the best validation loss: ``monitor="val_loss"``, ``restore_best=True``,
  no early stopping (the table's total epochs are all run). The saved epoch itself is kept in
  ``VIT_STUDY`` for reference (``vit_study_row``).
- Images 224 x 224 (ViT-B/16's native grid); the model is ``create("vit-b16", ...)`` with
  token (CLS) pooling for every initialisation, since the study's maps read the CLS row.

``init_vit(model, init, weights)``: ``random`` keeps the model's own (timm-style) initialisation;
``supervised`` (timm ``vit_base_patch16_224``), ``dino`` (``dino_vitbase16_pretrain.pth``) and
``mae`` (``mae_pretrain_vit_base.pth``) load a local checkpoint through ``load_weights``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from medxai.errors import ConfigError
from medxai.models.weights import LoadReport, load_weights

__all__ = ["DATASETS", "INITS", "VIT_STUDY", "init_vit", "vit_preset", "vit_preset_names", "vit_study_row"]

DATASETS = ("cp-child", "duke", "kvasir", "mura")
INITS = ("random", "supervised", "dino", "mae")

# (dataset, init): (optimizer, lr, momentum, weight decay, total epochs, saved epoch, batch size), as in the table
VIT_STUDY: dict[tuple[str, str], tuple[str, float, float, float, int, int, int]] = {
    ("cp-child", "random"): ("adam", 1e-5, 0.9, 1e-4, 20, 18, 64),
    ("cp-child", "supervised"): ("adam", 1e-5, 0.9, 1e-4, 20, 5, 64),
    ("cp-child", "dino"): ("adam", 1e-5, 0.9, 1e-4, 20, 12, 64),
    ("cp-child", "mae"): ("adam", 1e-5, 0.9, 1e-4, 20, 11, 64),
    ("duke", "random"): ("sgd", 0.1, 0.3, 0.0, 200, 79, 64),
    ("duke", "supervised"): ("sgd", 0.03, 0.1, 0.0, 20, 2, 64),
    ("duke", "dino"): ("sgd", 0.005, 0.1, 0.0, 15, 5, 64),
    ("duke", "mae"): ("sgd", 0.03, 0.1, 0.0, 15, 2, 64),
    ("kvasir", "random"): ("sgd", 0.08, 0.1, 0.0, 25, 24, 32),
    ("kvasir", "supervised"): ("sgd", 0.0018, 0.1, 0.0, 25, 8, 32),
    ("kvasir", "dino"): ("sgd", 0.0012, 0.1, 1e-4, 25, 20, 32),
    ("kvasir", "mae"): ("sgd", 0.02, 0.1, 1e-4, 25, 25, 32),
    ("mura", "random"): ("sgd", 0.001, 0.9, 1e-4, 200, 180, 64),
    ("mura", "supervised"): ("sgd", 0.001, 0.9, 1e-4, 100, 9, 64),
    ("mura", "dino"): ("sgd", 0.001, 0.9, 1e-4, 150, 43, 64),
    ("mura", "mae"): ("sgd", 0.001, 0.9, 1e-4, 100, 35, 64),
}

_INIT_ALIASES = {"random": "random", "scratch": "random", "none": "random", "supervised": "supervised",
                 "sup": "supervised", "imagenet": "supervised", "timm": "supervised", "dino": "dino", "mae": "mae"}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def _dataset(name: str) -> str:
    found = {_key(d): d for d in DATASETS}.get(_key(name))
    if found is None:
        raise ConfigError(f"unknown ViT study dataset {name!r}; known: {', '.join(DATASETS)}")
    return found


def _init(name: str) -> str:
    found = _INIT_ALIASES.get(_key(name))
    if found is None:
        raise ConfigError(f"unknown ViT initialisation {name!r}; known: {', '.join(INITS)}")
    return found


def vit_study_row(dataset: str, init: str) -> dict[str, Any]:
    """The table's row as it stands: optimizer, lr, momentum, weight_decay, epochs, saved_epoch,
    batch_size (dataset and init names are case/space/dash-insensitive; "sup" = supervised)."""
    opt, lr, mom, wd, epochs, saved, bs = VIT_STUDY[(_dataset(dataset), _init(init))]
    return {"optimizer": opt, "lr": lr, "momentum": mom, "weight_decay": wd, "epochs": epochs,
            "saved_epoch": saved, "batch_size": bs, "scheduler": "cosine"}


def vit_preset(dataset: str, init: str) -> dict[str, Any]:
    """``TrainConfig`` keys reproducing the study's setting for ``dataset`` (CP-Child, DUKE, Kvasir,
    MURA) and ``init`` (random, supervised, dino, mae); assumptions in the module docstring."""
    row = vit_study_row(dataset, init)
    cfg: dict[str, Any] = {"optimizer": row["optimizer"], "lr": row["lr"], "weight_decay": row["weight_decay"],
                           "scheduler": "cosine", "warmup_epochs": 0.0, "min_lr": 0.0, "epochs": row["epochs"],
                           "batch_size": row["batch_size"], "monitor": "val_loss", "restore_best": True}
    if row["optimizer"] == "adam":
        cfg["betas"] = (row["momentum"], 0.999)
    else:
        cfg["momentum"] = row["momentum"]
        cfg["nesterov"] = False
    return cfg


def vit_preset_names() -> list[str]:
    """Preset names ``"<dataset>/<init>"`` (``vit_preset(*name.split("/"))``)."""
    return [f"{d}/{i}" for d, i in VIT_STUDY]


def init_vit(model: nn.Module, init: str = "random", weights: str | Path | None = None) -> LoadReport | None:
    """Initialise a medxai ViT as the study: ``random`` (keep the model's own initialisation; no
    ``weights``) or ``supervised`` / ``dino`` / ``mae`` from the local checkpoint ``weights``
    (timm ``vit_base_patch16_224``, DINO ``dino_vitbase16_pretrain.pth``, MAE
    ``mae_pretrain_vit_base.pth`` layouts; ``load_weights`` maps keys, drops a head of another
    shape, resamples position embeddings). Every backbone tensor must be found. Returns the
    ``LoadReport`` (None for random) and records ``model.medxai_init``."""
    kind = _init(init)
    if kind == "random":
        if weights is not None:
            raise ConfigError(f"init 'random' takes no weights (got {weights!r}); use supervised, dino or mae")
        model.medxai_init = {"init": "random", "weights": None}
        return None
    if weights is None:
        raise ConfigError(f"init {kind!r} needs weights: PATH (a local checkpoint; nothing is downloaded)")
    report = load_weights(model, weights)
    model.medxai_init = {"init": kind, "weights": str(weights)}
    return report
