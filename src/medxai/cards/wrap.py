"""``CardModel``: an outside network behind medxai's contract — [0, 1] images in, logits out.

The card's normalisation comes first; the network's outputs are turned into logits where the card
says they are (log-)probabilities; a one-output binary model's score ``z`` becomes the logits
``[0, z]`` (softmax gives sigmoid(z) to the positive class); outputs are put in the audit's class
order by name. Each conversion is listed in ``conversions`` (the report prints them).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CardModel", "to_logits"]


def _logit_from_log_prob(lp: torch.Tensor) -> torch.Tensor:
    """logit(p) from log p: log p - log(1 - p), with 1 - p = -expm1(log p)."""
    return lp - torch.log(-torch.expm1(lp).clamp_max(-torch.finfo(lp.dtype).tiny))


def to_logits(z: torch.Tensor, output: str, task: str) -> torch.Tensor:
    """The logits behind a network's ``output`` (``logits`` | ``probabilities`` | ``log_probabilities``).

    Softmax outputs (K >= 2 columns; binary, multiclass, ordinal): log p, which equals the logits up
    to a per-image constant (softmax, cross-entropy, DLR and every margin are unchanged). Sigmoid
    outputs (multilabel, or one binary column): logit(p), exactly the logits.
    """
    if output == "logits":
        return z
    tiny = torch.finfo(z.dtype).tiny
    lp = torch.log(z.clamp_min(tiny)) if output == "probabilities" else z
    if task == "multilabel" or z.shape[-1] == 1:
        return _logit_from_log_prob(lp.clamp_max(0.0))
    return lp


def conversion_notes(output: str, task: str, n_out: int) -> list[str]:
    """What :class:`CardModel` does to the network's outputs, in words (for the report)."""
    notes = []
    sigmoid = task == "multilabel" or n_out == 1
    if output == "probabilities":
        notes.append("probabilities -> logits as logit(p)" if sigmoid else
                     "softmax probabilities -> log p (the logits up to a per-image constant: logit explanations "
                     "explain log-probabilities)")
    elif output == "log_probabilities":
        notes.append("log-probabilities -> logits as log p - log(1 - p)" if sigmoid else
                     "log-softmax outputs used as logits (equal up to a per-image constant)")
    if task == "binary" and n_out == 1:
        notes.append("one output z (the positive class's score) -> logits [0, z]")
    return notes


class CardModel(nn.Module):
    """``order(binary2(to_logits(net(normalize(x)))))``: (B, C, H, W) in [0, 1] -> logits (B, K).

    ``order``: output columns in the audit's class order (None: as the network gives them).
    ``default_cam_layer`` is re-rooted under ``net.``.
    """

    def __init__(self, net: nn.Module, normalize: nn.Module, *, output: str, task: str, n_out: int,
                 order: list[int] | None = None, cam_layer: str | None = None) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.output, self.task, self.n_out = output, task, int(n_out)
        self.register_buffer("order", None if order is None else torch.as_tensor(order, dtype=torch.long),
                             persistent=False)
        if cam_layer:
            self.default_cam_layer = f"net.{cam_layer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(self.normalize(x))
        if isinstance(z, (tuple, list)):  # e.g. torch.export programs return a tuple of one
            z = z[0]
        z = to_logits(z.reshape(z.shape[0], -1), self.output, self.task)
        if self.task == "binary" and z.shape[-1] == 1:
            z = torch.cat([torch.zeros_like(z), z], dim=-1)
        return z if self.order is None else z.index_select(-1, self.order)
