"""Training configuration: pydantic models validated at the door; errors name the bad key.

``TrainConfig`` is what ``fit`` needs (optimizer, schedule, loss, loop options).
``RunConfig`` is the YAML file of ``medxai train``: a run name, the model, the data and a
``train`` section. ``apply_overrides`` applies ``--set key.sub=value`` pairs (values parsed by
``safe_yaml_load``, so ``1e-3``, ``true`` and ``null`` work).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medxai._util.io import safe_yaml_load
from medxai.errors import ConfigError, MedxaiError

Task = Literal["binary", "multiclass", "ordinal", "multilabel"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ObjectiveConfig(BaseModel):
    """``name`` of a registered objective (``medxai.train.OBJECTIVES``); other keys are its parameters."""

    model_config = ConfigDict(extra="allow")

    name: str = "standard"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStopping(_Strict):
    """Stop when ``monitor`` (default: the config's ``monitor``) has not improved by more than
    ``min_delta`` for ``patience`` epochs."""

    patience: int = Field(5, ge=1)
    monitor: str | None = None
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(_Strict):
    """Everything ``medxai.train.fit`` reads. Defaults give plain Adam, no schedule, CE loss.

    Schedules step every iteration (cosine, warm-up) or every epoch (step, plateau); warm-up is
    linear from ``lr / warmup_steps`` to ``lr`` over ``warmup_epochs`` epochs (fractions allowed).
    ``monitor`` picks the best checkpoint: ``val_loss``, ``train_loss`` or ``val_<metric>`` with
    a metric of ``medxai.evaluate.metric_names(task)``; ``mode`` auto = min for losses and ECE.
    ``balance``: ``loss`` weights classes by n / (K n_k) (multilabel: pos_weight = n_neg / n_pos),
    ``sampler`` draws samples with probability 1 / n_class (single-label tasks).
    ``ordinal``: ``ce`` (softmax cross-entropy), ``cumulative`` (proportional-odds cumulative link,
    McCullagh 1980) or ``regression`` (one score s, class logits -(s - k)^2 / 2); the last two need
    the model wrapped in ``medxai.train.OrdinalHead``.
    """

    task: Task | None = None
    ordinal: Literal["ce", "cumulative", "regression"] = "ce"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    drop_last: bool = False

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)

    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=0)

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    early_stopping: EarlyStopping | None = None
    restore_best: bool = True

    balance: Literal["none", "loss", "sampler"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False

    seed: int = 0
    deterministic: bool = True
    num_workers: int = Field(0, ge=0)
    device: str = "auto"
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError("nesterov applies to optimizer 'sgd' only")
        if self.ordinal != "ce" and self.task not in (None, "ordinal"):
            raise ValueError(f"ordinal={self.ordinal!r} needs task 'ordinal', not {self.task!r}")
        if self.balance == "sampler" and self.task == "multilabel":
            raise ValueError("balance='sampler' is for single-label tasks; use balance='loss' for multilabel")
        return self


class ModelSection(_Strict):
    """``medxai.models.create(name, num_classes, in_chans, pretrained=, normalize=, **params)``;
    ``freeze`` is passed to ``medxai.models.freeze(model, until=freeze)`` when set."""

    name: str
    pretrained: str | None = None
    normalize: str | None = "imagenet"
    in_chans: int | None = Field(None, ge=1)
    freeze: str | int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class DataSection(_Strict):
    """Dataset specs for ``medxai.data.open_dataset(spec, split=...)``; ``val`` defaults to the
    train spec with ``val_split``. ``options`` are passed to ``open_dataset`` as keywords."""

    train: str
    val: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    options: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    """The YAML file of ``medxai train``: run ``name`` (folder ``out/name``), model, data, train.
    ``name`` is one folder name (letters, digits, ``_ . + -``, no path separator, no leading dot),
    so the run stays inside ``out``."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,127}$")
    out: str = "runs"
    model: ModelSection
    data: DataSection
    train: TrainConfig = Field(default_factory=TrainConfig)


def _format_errors(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        key = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "config")
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        val = err.get("input")
        quiet = err.get("type") in ("missing", "extra_forbidden") or isinstance(val, Mapping)
        shown = "" if quiet else f" (got {val!r})"
        parts.append(f"{key}: {msg}{shown}")
    return "invalid config: " + "; ".join(parts)


def validate(cls: type[BaseModel], data: Any, *, prefix: str = "") -> Any:
    """``cls.model_validate(data)`` with pydantic errors turned into one ``ConfigError`` line
    naming each bad key (``prefix`` is prepended, e.g. ``"train."``)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, prefix)) from None


def train_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    """A ``TrainConfig`` from itself, a dict or None (defaults)."""
    return validate(TrainConfig, config)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001). Values are YAML scalars/flow collections."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set has an empty key: {item!r}")
    try:
        value = safe_yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {' '.join(str(exc).split())}") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.sub=value`` override set (creating sections)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def check_options(cfg: RunConfig | TrainConfig) -> None:
    """Validate the sections passed on as keyword arguments, before any data is read or any model
    built: ``train.objective`` against its objective's parameters (``check_objective``: unknown or
    missing keys, refused values such as a Linf ``eps`` above 1) and ``model.pretrained`` (the file
    exists and holds weights, not a TorchScript / torch.export / ONNX program). One ``ConfigError``
    line naming the key. (``model.params`` and ``data.options`` go to builders taking ``**kw``:
    checked there.)"""
    from medxai.train.objectives import check_objective

    train, prefix = (cfg.train, "train.") if isinstance(cfg, RunConfig) else (cfg, "")
    check_objective(train.objective.name, train.objective.params(), prefix=prefix)
    if isinstance(cfg, RunConfig) and cfg.model.pretrained is not None:
        from medxai.models.weights import check_weights_file

        try:
            check_weights_file(cfg.model.pretrained)
        except MedxaiError as exc:
            raise ConfigError(f"model.pretrained: {exc}") from None


def load_run_config(path: str | Path, overrides: Iterable[str] = (), *, options: bool = False) -> RunConfig:
    """Read a ``medxai train`` YAML file (``safe_yaml_load``), apply overrides, validate; errors
    start with the file's path. ``options=True`` also checks the keyword sections (``check_options``:
    the objective's keys and values), as ``medxai train`` does."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    try:
        data = safe_yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    merged = apply_overrides(data, overrides)
    try:
        cfg = validate(RunConfig, merged)
        if options:
            check_options(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def dump_yaml(model: BaseModel) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
