"""``load_card``: a model card -> (model taking [0, 1] images and returning logits, RunInfo).

Every check that can fail runs here, on a two-image probe batch of the card's input size, before
any heavy work: the file reads, the network runs on the card's input shape, it gives as many
outputs as the card has classes, declared probabilities look like probabilities, an ONNX
conversion matches onnxruntime, the CAM layer exists. Problems are one-line ``ModelError`` messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medxai.cards.card import ModelCard, file_sha256, read_card
from medxai.cards.formats import READERS, first_line
from medxai.cards.wrap import CardModel, conversion_notes
from medxai.errors import ModelError
from medxai.models import hooks_unavailable
from medxai.runs import RunInfo

__all__ = ["card_class_order", "data_class_order", "load_card"]

ONNX_ATOL = 1e-4  # the converted graph vs onnxruntime on the probe batch (float32 kernels differ)


def card_class_order(card: ModelCard) -> list[str]:
    """The model's classes in medxai's order: the card's, except binary puts the positive class second."""
    return [str(card.negative_class), str(card.positive_class)] if card.task == "binary" else list(card.classes)


def data_class_order(cards: Mapping[str, ModelCard], names: list[str], task: str) -> list[str] | None:
    """Check every card against the data's class ``names`` (by name) and ``task``; returns the order
    the data must be read in (None: as it is): a binary task's positive class second. Mismatches
    are refused listing both class lists."""
    for model, card in cards.items():
        if sorted(card.classes) != sorted(names):
            raise ModelError(f"model {model!r}: the card's classes {card.classes} are not the data's classes {names} "
                             "(classes are matched by name; rename the folders or declare classes in the data spec)")
        if card.task != task:
            raise ModelError(f"model {model!r}: the card's task is {card.task}, the data's is {task}")
    if task != "binary" or not cards:
        return None
    positives = {m: c.positive_class for m, c in cards.items()}
    if len(set(positives.values())) > 1:
        raise ModelError(f"the cards name different positive classes {positives}: audit them separately")
    order = card_class_order(next(iter(cards.values())))
    return None if order == list(names) else order


def _probe(card: ModelCard) -> torch.Tensor:
    h, w = card.input.size
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, card.input.channels, h, w, generator=gen)


def _run_probe(card: ModelCard, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        with torch.no_grad():
            z = net(x)
    except Exception as exc:  # a shape the network cannot take, a fixed batch size...
        hint = (" (an exported program with a fixed batch size? export with dynamic_shapes for dimension 0)"
                if card.format == "exported" else "")
        raise ModelError(f"{card.path}: the model fails on a batch of 2 images of shape {tuple(x.shape[1:])} "
                         f"(the card's input){hint}: {first_line(exc)}") from None
    if isinstance(z, (tuple, list)) and z and isinstance(z[0], torch.Tensor):
        z = z[0]
    if not isinstance(z, torch.Tensor) or z.ndim < 1 or z.shape[0] != x.shape[0]:
        raise ModelError(f"{card.path}: the model must return one (B, K) tensor, got {type(z).__name__}")
    z = z.reshape(z.shape[0], -1).float()
    if not bool(torch.isfinite(z).all()):
        raise ModelError(f"{card.path}: the model returns NaN or Inf on a probe batch of the card's input: refused")
    return z


def _check_outputs(card: ModelCard, z: torch.Tensor) -> list[str]:
    """Outputs fit the card (count, probabilities); returns warnings for what looks wrong but may not be."""
    n_out, k = z.shape[1], len(card.classes)
    if n_out != k and not (card.task == "binary" and n_out == 1):
        raise ModelError(f"{card.path}: the model gives {n_out} outputs per image but the card lists {k} classes "
                         f"{card.classes}")
    sigmoid = card.task == "multilabel" or n_out == 1
    in_unit = bool(((z >= 0) & (z <= 1)).all())
    sums_to_one = bool(torch.allclose(z.sum(-1), torch.ones(z.shape[0]), atol=1e-3))
    if card.output == "probabilities" and not (in_unit and (sigmoid or sums_to_one)):
        want = "values in [0, 1]" if sigmoid else "rows of values in [0, 1] summing to 1"
        raise ModelError(f"{card.path}: the card says output: probabilities, but the outputs are not {want} "
                         f"(e.g. {[round(v, 4) for v in z[0].tolist()[:4]]})")
    if card.output == "log_probabilities" and bool((z > 1e-5).any()):
        raise ModelError(f"{card.path}: the card says output: log_probabilities, but some outputs are > 0")
    if card.output == "logits" and not sigmoid and in_unit and sums_to_one:
        return ["the outputs look like softmax probabilities (rows sum to 1): if the model ends in a softmax, "
                "say output: probabilities in its card"]
    return []


def _order(card: ModelCard, n_out: int, class_order: list[str] | None) -> tuple[list[str], list[int] | None]:
    """(classes in output order after wrapping, column permutation or None)."""
    columns = card_class_order(card) if n_out == 1 else list(card.classes)
    target = list(class_order) if class_order is not None else card_class_order(card)
    if sorted(target) != sorted(columns):
        raise ModelError(f"{card.path}: the model's classes {card.classes} are not the data's classes {target} "
                         "(matched by name)")
    perm = [columns.index(c) for c in target]
    return target, None if perm == list(range(len(perm))) else perm


def _crosscheck(card: ModelCard, net: nn.Module, x: torch.Tensor) -> float | None:
    if card.format != "onnx":
        return None
    from medxai.cards.onnx_graph import crosscheck

    return crosscheck(card.path, net, x, atol=ONNX_ATOL)


def load_card(source: str | Path | ModelCard, *, device: str | torch.device | None = None,
              class_order: list[str] | None = None) -> tuple[CardModel, RunInfo]:
    """Read a card and its model: ``(CardModel in eval mode on device, RunInfo)``.

    ``class_order``: the class names the outputs must come in (the data's, matched by name;
    default: the card's, with a binary task's positive class second). ``RunInfo.meta`` holds what
    the report prints: format, file, SHA-256, conversions, warnings, ONNX cross-check.
    """
    from medxai.models._common import resolve_normalize

    card = source if isinstance(source, ModelCard) else read_card(source)
    net = READERS[card.format](card)
    norm = card.input.normalize
    normalize, norm_json = resolve_normalize(norm if isinstance(norm, str) else (norm.mean, norm.std),
                                             card.input.channels)
    x = normalize(_probe(card))
    z = _run_probe(card, net, x)
    warnings = _check_outputs(card, z)
    diff = _crosscheck(card, net, x)
    names, perm = _order(card, z.shape[1], class_order)
    if card.cam_layer:
        _check_layer(card, net)
    model = CardModel(net, normalize, output=card.output, task=card.task, n_out=z.shape[1], order=perm,
                      cam_layer=card.cam_layer).eval()
    if device is not None:
        model.to(device)
    meta: dict[str, Any] = {
        "card_file": None if card.source is None else str(card.source), "format": card.format,
        "file": card.path, "sha256": file_sha256(card.path), "card": card.model_dump(),
        "image_size": list(card.input.size), "channels": card.input.channels, "normalize": norm_json,
        "output": card.output, "positive_class": card.positive_class,
        "conversions": conversion_notes(card.output, card.task, z.shape[1])
        + ([f"outputs reordered to the classes {names} by name"] if perm else []),
        "warnings": warnings, "onnx_max_abs_diff": diff, "hooks_unavailable": hooks_unavailable(net)}
    where = card.source or Path(card.path)  # what reloads it: the card file (maps.json and score use it)
    return model, RunInfo(run_dir=where, task=card.task, class_names=names, model_config=None, meta=meta,
                          checkpoint=Path(card.path))


def _check_layer(card: ModelCard, net: nn.Module) -> None:
    try:
        net.get_submodule(str(card.cam_layer))
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n][-5:]
        raise ModelError(f"{card.path}: cam_layer {card.cam_layer!r} is not a module of the model "
                         f"(its last modules: {names})") from None
