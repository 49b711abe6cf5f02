"""Outside models in the audit: cards read and checked against the data before any heavy work.

- :func:`read_cards` reads every ``models[].card`` of the config (one-line errors naming the card).
- :func:`data_options` derives the data's image size and channels from the cards (they must agree
  with each other and with a size the config states).
- ``medxai.cards.data_class_order`` matches the cards' classes to the data's *by name* (a mismatch
  is refused listing both) and says which class order the data must be reopened in so that a
  binary task's positive class is the card's.
"""

from __future__ import annotations

from typing import Any

from medxai.cards import ModelCard, read_card
from medxai.errors import ModelError
from medxai.pipeline.config import AuditConfig

__all__ = ["data_options", "describe_resize", "read_cards"]


def read_cards(cfg: AuditConfig) -> dict[str, ModelCard]:
    """The cards of the config's outside models, by model name."""
    return {mc.name: read_card(mc.card) for mc in cfg.models if mc.card}


def data_options(cfg: AuditConfig, cards: dict[str, ModelCard], synthetic: bool | None = None) -> dict[str, Any]:
    """``size`` and ``channels`` for the data from the cards (empty without cards)."""
    if not cards:
        return {}
    sizes = {n: tuple(c.input.size) for n, c in cards.items()}
    chans = {n: c.input.channels for n, c in cards.items()}
    if len(set(sizes.values())) > 1:
        raise ModelError(f"the models' cards ask for different input sizes {sizes}: audit them separately")
    if len(set(chans.values())) > 1:
        raise ModelError(f"the models' cards ask for different channel counts {chans}: audit them separately")
    (h, w), c = next(iter(sizes.values())), next(iter(chans.values()))
    if h != w:
        raise ModelError(f"input size [{h}, {w}]: only square inputs are supported (images are resized by the "
                         "shorter side and centre-cropped)")
    synth = cfg.data.use_synthetic(synthetic)
    stated = cfg.data.synthetic.size if synth and cfg.data.synthetic else cfg.data.size
    if stated is not None and stated != h and (synth or cfg.models_trained()):
        raise ModelError(f"data size {stated} differs from the cards' input size {h}")
    if c not in (1, 3):
        raise ModelError(f"input.channels {c}: datasets are read as 1 (grey) or 3 (RGB) channels")
    return {"size": h, "channels": c}


def describe_resize(options: dict[str, Any]) -> str:
    """How the data was fitted to the cards, in words (for the report's data section)."""
    if not options:
        return ""
    s = options["size"]
    return (f"; images resized to the cards' input: shorter side to {s} px (bilinear, antialiased when shrinking), "
            f"centre crop {s}x{s}, {options['channels']} channel(s)")


def split_given(cfg: AuditConfig, given: dict[str, Any]) -> tuple[dict[str, ModelCard], dict[str, Any]]:
    """The models handed over in Python: (cards, plain modules), each a ``given`` model of ``cfg``."""
    from torch import nn

    wanted = {m.name for m in cfg.models if m.given}
    if set(given) != wanted:
        raise ModelError(f"models given in Python {sorted(given)} do not match the config's given models "
                         f"{sorted(wanted)}")
    cards, modules = {}, {}
    for name, obj in given.items():
        if isinstance(obj, ModelCard):
            cards[name] = obj
        elif isinstance(obj, nn.Module):
            modules[name] = obj
        else:
            raise ModelError(f"model {name!r}: expected a torch.nn.Module, a ModelCard or a card path, "
                             f"got {type(obj).__name__}")
    return cards, modules


def module_fingerprint(module: Any) -> str:
    """SHA-256 of a module's class name and every tensor of its state dict (the stage key of a given module)."""
    import hashlib

    import torch

    h = hashlib.sha256(type(module).__qualname__.encode())
    for key, t in sorted(module.state_dict().items()):
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 over every item's id, label and image bytes (decodes each image once): a dataset
    object has no file to hash, and a stale cache would be a silent wrong result."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for i in range(len(dataset)):
        item = dataset[i]
        h.update(str(item.get("id", i)).encode())
        h.update(np.asarray(item["label"], dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(np.asarray(item["image"], dtype=np.float32)).tobytes())
    return h.hexdigest()


def given_data(cfg: AuditConfig, cards: dict[str, ModelCard],
               dataset: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A dataset object given in Python as the audited split: (datasets, description, stage-key parts)."""
    from medxai.cards import data_class_order
    from medxai.pipeline.data import describe_counts

    if cfg.models_trained():
        raise ModelError("a dataset given in Python is audited as one split; models to train need data.spec "
                         "or data.synthetic (train and val splits)")
    for attr in ("class_names", "task", "__getitem__", "__len__"):
        if not hasattr(dataset, attr):
            raise ModelError(f"data: a {type(dataset).__name__} has no {attr!r}; give a medxai dataset "
                             "(medxai.data.open_dataset) or a dataset spec")
    names, task = [str(c) for c in dataset.class_names], str(dataset.task)
    if data_class_order(cards, names, task) is not None:
        raise ModelError(f"the cards' positive class is not the dataset's second class {names}: open the dataset "
                         "with classes in the order [negative, positive]")
    split = cfg.data.split
    desc = {"source": "python", "description": f"Dataset {type(dataset).__name__} ({len(dataset)} images, given in "
            "Python)", "task": task, "class_names": names, "split": split,
            "splits": {split: describe_counts(dataset)}}
    if task == "binary":
        desc["positive_class"] = names[1]
    return {split: dataset}, desc, {"dataset": dataset_fingerprint(dataset), "split": split}
