"""The model card: everything medxai needs to know about a model it did not train.

A card is a small YAML file (read with ``safe_yaml_load``; unknown keys refused with the key
named)::

    path: model.onnx            # the model file, relative to the card
    format: onnx                # torchscript | exported | onnx | state_dict | run
    arch: null                  # state_dict only: zoo name, timm:/torchvision:/monai:NAME, module:callable
    task: binary                # binary | multiclass | multilabel | ordinal
    classes: [NORMAL, LESION]   # names in the model's output order
    positive_class: LESION      # binary only (default classes[1])
    input: {size: [224, 224], channels: 3, normalize: imagenet}   # what the model expects outside itself
    output: logits              # logits | probabilities | log_probabilities
    cam_layer: null             # optional module name for the CAM methods
    trust_code: false           # module:callable imports user code only when true
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from medxai._util.io import safe_yaml_load
from medxai.errors import ModelError

__all__ = ["FORMATS", "InputSpec", "ModelCard", "file_sha256", "read_card"]

FORMATS = ("torchscript", "exported", "onnx", "state_dict", "run")
_ARCH_PREFIXES = ("timm:", "torchvision:", "monai:")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NormalizeStats(_Strict):
    """``{mean, std}``: one number for every channel, or one per channel; std > 0."""

    mean: float | list[float]
    std: float | list[float]

    @field_validator("std")
    @classmethod
    def _positive(cls, v: float | list[float]) -> float | list[float]:
        if any(x <= 0 for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"std must be > 0, got {v}")
        return v


class InputSpec(_Strict):
    """The images the model expects: ``size`` [H, W] pixels, ``channels``, and the normalisation it
    expects *outside* itself (medxai applies it, so [0, 1] images go in as everywhere else)."""

    size: list[int] = Field(min_length=2, max_length=2)
    channels: int = Field(3, ge=1)
    normalize: Literal["imagenet", "none"] | NormalizeStats = "none"

    @field_validator("size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if any(int(s) < 1 for s in v):
            raise ValueError(f"size must be two positive integers [H, W], got {v}")
        return [int(s) for s in v]

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        if isinstance(self.normalize, NormalizeStats):
            for key in ("mean", "std"):
                v = getattr(self.normalize, key)
                if isinstance(v, list) and len(v) not in (1, self.channels):
                    raise ValueError(f"normalize.{key} has {len(v)} values for {self.channels} channel(s)")
        return self


class ModelCard(_Strict):
    """A validated card; ``path`` is absolute once read by :func:`read_card`."""

    path: str
    format: Literal["torchscript", "exported", "onnx", "state_dict", "run"]
    arch: str | None = None
    task: Literal["binary", "multiclass", "multilabel", "ordinal"]
    classes: list[str] = Field(min_length=1)
    positive_class: str | None = None
    input: InputSpec
    output: Literal["logits", "probabilities", "log_probabilities"] = "logits"
    cam_layer: str | None = None
    trust_code: bool = False
    _folder: str = PrivateAttr(".")  # the card's folder: ``module:callable`` is imported from there
    _source: str | None = PrivateAttr(None)  # the card file, when read from one

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = [str(c) for c in v]
            if len(set(v)) != len(v):
                raise ValueError(f"class names must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.format == "state_dict" and not self.arch:
            raise ValueError("format state_dict needs arch (a zoo name, timm:/torchvision:/monai:NAME or "
                             "module:callable)")
        if self.format != "state_dict" and self.arch:
            raise ValueError(f"arch is only for format state_dict (format is {self.format})")
        if self.task == "binary":
            if len(self.classes) != 2:
                raise ValueError(f"a binary task has 2 classes, got {self.classes}")
            if self.positive_class is None:
                self.positive_class = self.classes[1]
            elif self.positive_class not in self.classes:
                raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        elif self.positive_class is not None:
            raise ValueError(f"positive_class is for binary tasks only (task is {self.task})")
        if self.task in ("multiclass", "ordinal") and len(self.classes) < 2:
            raise ValueError(f"a {self.task} task needs at least 2 classes, got {self.classes}")
        return self

    @property
    def user_code(self) -> bool:
        """Whether building the model imports the user's own module (``arch: module:callable``)."""
        return bool(self.arch) and ":" in self.arch and not self.arch.startswith(_ARCH_PREFIXES)

    @property
    def folder(self) -> Path:
        return Path(self._folder)

    @property
    def source(self) -> Path | None:
        """The card file it was read from (None for a card given as a mapping)."""
        return None if self._source is None else Path(self._source)

    @property
    def negative_class(self) -> str | None:
        return None if self.positive_class is None else next(c for c in self.classes if c != self.positive_class)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())


def read_card(source: str | Path | dict[str, Any], *, base: str | Path | None = None) -> ModelCard:
    """Read and validate a card (a YAML path, or a dict whose ``path`` is relative to ``base``).

    Errors are one line naming the card and the key; the model file must exist.
    """
    where = "model card"
    if isinstance(source, dict):
        raw, root = dict(source), Path(base or ".")
    else:
        path = Path(source)
        where, root = str(path), path.parent
        if not path.is_file():
            raise ModelError(f"{path}: model card not found")
        try:
            raw = safe_yaml_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(raw, dict):
            raise ModelError(f"{path}: a model card is a mapping of keys (path, format, task, classes, input, ...)")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise ModelError(f"{where}: {_errors(exc)}") from None
    file = (root / card.path).resolve()
    if not file.exists():
        raise ModelError(f"{where}: path {card.path!r}: {file} not found")
    if card.format == "run" and not file.is_dir():
        raise ModelError(f"{where}: format run needs path to be a medxai run directory, {file} is not a directory")
    if card.format != "run" and not file.is_file():
        raise ModelError(f"{where}: path {card.path!r}: {file} is not a file")
    card.path = str(file)
    card._folder = str(root.resolve())
    if not isinstance(source, dict):
        card._source = str(Path(source).resolve())
    return card


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (of every file, in sorted order, for a directory): what stage keys hash."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
