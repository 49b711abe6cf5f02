"""Outside models: model cards and the loaders of TorchScript, torch.export, ONNX and state-dict files.

``read_card(path)`` validates a card; ``load_card(card, device=..., class_order=...)`` returns the
model behind medxai's contract ([0, 1] images in, logits out, classes in the data's order by
name) and a ``RunInfo`` whose ``meta`` says what was loaded and converted. See ``card.py`` for
the keys and ``formats.py`` for what runs when each format is read.
"""

from medxai.cards.card import FORMATS, InputSpec, ModelCard, file_sha256, read_card
from medxai.cards.load import card_class_order, data_class_order, load_card
from medxai.cards.wrap import CardModel, to_logits

__all__ = ["FORMATS", "CardModel", "InputSpec", "ModelCard", "card_class_order", "data_class_order", "file_sha256",
           "load_card", "read_card", "to_logits"]
