"""The training loop: ``fit(model, train_data, val_data, config) -> TrainResult``.

One loop for every scheme: how a batch becomes a loss and an update is the configured
``Objective`` (``medxai.train.objectives``); the loop owns data order, optimizer, schedule,
validation, checkpoints, early stopping and the run directory:

    run_dir/config.yaml        the resolved TrainConfig (every default written out)
    run_dir/model.json         what rebuilds the model (medxai_config, task, classes, input shape)
    run_dir/metrics.jsonl      one JSON line per epoch (losses, val metrics, lr, time)
    run_dir/last.safetensors   weights + optimizer + schedulers + RNG states + loop state
    run_dir/best.safetensors   weights of the best epoch by ``monitor``
    run_dir/train.log          human-readable log; run_dir/summary.json: best epoch, time

Every file is written atomically. ``resume=True`` continues from last.safetensors; on CPU the
result is bitwise identical to an uninterrupted run (the data order of epoch e depends only on
(seed, e), and every RNG state is restored).

Under torchrun (WORLD_SIZE > 1) the same loop trains with DistributedDataParallel
(``medxai.train.ddp``): each rank takes its share of the epoch's order with a per-rank
``batch_size``; training sums, validation logits and BatchNorm statistics are combined across
ranks; rank 0 alone writes the run directory; last.safetensors keeps every rank's RNG state.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from medxai._util.io import atomic_write_json, atomic_write_text
from medxai._util.seed import derive_seed, seed_everything
from medxai._util.validate import check_images
from medxai.errors import CheckpointError, ConfigError, MedxaiError
from medxai.evaluate.metrics import classification, higher_is_better, metric_names
from medxai.evaluate.predict import collate, eval_mode, probabilities
from medxai.runs import (
    load_model_state,
    read_checkpoint,
    save_checkpoint,
    write_model_json,
)
from medxai.train import ddp as _ddp
from medxai.train.config import TrainConfig, train_config
from medxai.train.losses import (
    build_loss,
    class_weights_from_labels,
    sample_weights_from_labels,
)
from medxai.train.objectives import StepContext, check_objective

log = logging.getLogger("medxai.train")


class NonFiniteLossError(MedxaiError):
    """The training loss became NaN/Inf. ``epoch`` and ``step`` count from 1."""

    def __init__(self, epoch: int, step: int, value: float, checkpoint: Path | None) -> None:
        self.epoch, self.step, self.value, self.checkpoint = epoch, step, value, checkpoint
        kept = f"last good checkpoint kept: {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(f"non-finite training loss ({value}) at epoch {epoch}, step {step}; "
                         f"training stopped before the update ({kept})")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped ``fit`` during epoch ``epoch`` (from 1). Nothing is written at the
    interruption: ``checkpoint`` (last.safetensors, or None before the first epoch ended) holds the
    state after epoch ``epochs_done``, which ``resume=True`` continues bitwise as if never stopped."""

    def __init__(self, epoch: int, epochs_done: int, checkpoint: Path | None, run_dir: Path | None) -> None:
        self.epoch, self.epochs_done, self.checkpoint, self.run_dir = epoch, epochs_done, checkpoint, run_dir
        kept = (f"{checkpoint} holds epoch {epochs_done}" if checkpoint is not None
                else "no checkpoint was written")
        super().__init__(f"interrupted at epoch {epoch} ({kept})")


@dataclass
class TrainResult:
    """What ``fit`` returns. ``model`` holds the best weights when ``restore_best`` (else the last).
    ``history``: one dict per epoch (as in metrics.jsonl); epochs count from 1."""

    model: nn.Module
    history: list[dict[str, Any]]
    monitor: str
    best_epoch: int | None
    best_value: float | None
    epochs_run: int
    stopped_early: bool
    train_time_s: float
    run_dir: Path | None = None
    task: str = ""
    class_names: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers
def _worker_init(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002 - datasets may use the legacy global RNG
    random.seed(s)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {exc}") from None


def labels_of(data: Dataset) -> np.ndarray:
    """All labels of a dataset: its ``.labels`` attribute, else read item by item."""
    labels = getattr(data, "labels", None)
    if labels is not None:
        return np.asarray(labels)
    return np.stack([np.asarray(collate([data[i]])["label"][0]) for i in range(len(data))])  # type: ignore[arg-type]


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
                          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    try:
        torch.set_rng_state(st["torch"])
        np.random.set_state(tuple(st["numpy"]))  # noqa: NPY002
        py = st["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(st["cuda"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint RNG state is malformed: {exc}") from None


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _jsonline(rec: Mapping[str, Any]) -> str:
    return json.dumps({k: _finite_or_none(v) for k, v in rec.items()}, allow_nan=False)


def _packable(state: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an objective's state that checkpoints can hold (tensors, numbers, strings)."""
    def ok(v: Any) -> bool:
        if isinstance(v, (torch.Tensor, int, float, str, bool)) or v is None:
            return True
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        if isinstance(v, Mapping):
            return all(isinstance(k, str) and ok(x) for k, x in v.items())
        return False

    return {k: v for k, v in state.items() if isinstance(k, str) and ok(v)}


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``lr`` after ``t`` iterations: linear warm-up, then cosine to ``min_lr``,
    step decay (``gamma`` every ``step_size`` epochs) or constant (none / plateau)."""
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    floor = cfg.min_lr / cfg.lr

    def factor(t: int) -> float:
        w = (t + 1) / warm if t < warm else 1.0
        if cfg.scheduler == "cosine":
            p = min(max((t - warm) / max(1, total - warm), 0.0), 1.0)
            return w * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))
        if cfg.scheduler == "step":
            return w * cfg.gamma ** ((t // steps_per_epoch) // cfg.step_size)
        return w

    return factor


def _better_fn(name: str, mode: str) -> Callable[[float, float | None, float], bool]:
    """``better(v, best, delta)``: whether ``v`` improves on ``best`` for metric ``name``."""
    maximize = higher_is_better(name) if mode == "auto" else mode == "max"

    def better(v: float, best: float | None, delta: float = 0.0) -> bool:
        if v is None or not math.isfinite(v):
            return False
        if best is None:
            return True
        return v > best + delta if maximize else v < best - delta

    return better


# ----------------------------------------------------------------------------- run state
@dataclass
class _Run:
    """What one ``fit`` call works on: the fixed parts ``_prepare`` builds, then the loop state."""

    cfg: TrainConfig
    model: nn.Module
    train_data: Dataset
    val_data: Dataset | None
    task: str
    head: Any
    monitor: str
    known: set[str]
    es_monitor: str | None
    device: torch.device
    dist_info: _ddp.DistInfo
    run_dir: Path | None
    num_classes: int
    class_names: list[str]
    in_shape: list[int]
    gen: torch.Generator
    loader: DataLoader
    val_loader: DataLoader | None
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    plain_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    objective: Any
    ctx: StepContext = field(init=False)
    # loop state (what last.safetensors keeps, and what resume restores)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    es_best: float | None = None
    es_bad: int = 0
    stopped: bool = False
    time_before: float = 0.0
    log_lines: list[str] = field(default_factory=list)
    have_last: bool = False  # last.safetensors holds a good state (named by NonFiniteLossError)
    epoch: int = 0  # the epoch and step being trained, from 0
    step: int = 0
    t_start: float = 0.0
    first_val: tuple[torch.Tensor, torch.Tensor] | None = None
    bars: Any = None  # progress display (rank 0 with progress=True), its two task ids
    ep_task: Any = None
    st_task: Any = None

    @property
    def out_dir(self) -> Path | None:
        """Where to write: rank 0 alone writes the run directory."""
        return self.run_dir if self.dist_info.is_main else None

    @property
    def last_path(self) -> Path | None:
        return self.run_dir / "last.safetensors" if self.run_dir else None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def warm_steps(self) -> int:
        return round(self.cfg.warmup_epochs * self.steps_per_epoch)

    def kept_checkpoint(self) -> Path | None:
        return self.last_path if self.have_last else None

    def note(self, msg: str) -> None:
        """Log ``msg`` and rewrite train.log."""
        log.info(msg)
        self.log_lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}")
        if self.out_dir is not None:
            atomic_write_text(self.out_dir / "train.log", "\n".join(self.log_lines) + "\n")

    def autocast(self) -> Any:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def backward_step(self, loss: torch.Tensor) -> None:
        """``StepContext.backward_step``: stop (every rank) before a non-finite update."""
        value = float(loss.detach())
        if self.dist_info.enabled and not _ddp.all_finite(value):  # stop every rank together
            value = value if not math.isfinite(value) else float("nan")
        if not math.isfinite(value):
            raise NonFiniteLossError(self.epoch + 1, self.step + 1, value, self.kept_checkpoint())
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def write_metrics(self) -> None:
        if self.out_dir is not None:
            atomic_write_text(self.out_dir / "metrics.jsonl", "".join(_jsonline(r) + "\n" for r in self.history))


# ----------------------------------------------------------------------------- fit
def fit(model: nn.Module, train_data: Dataset, val_data: Dataset | None = None,
        config: TrainConfig | Mapping[str, Any] | None = None, *, run_dir: str | Path | None = None,
        resume: bool = False, progress: bool = False, meta: Mapping[str, Any] | None = None,
        full_config: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` on ``train_data`` (items: dict with ``image`` (C, H, W) in [0, 1] and ``label``).

    ``config``: a ``TrainConfig`` or dict (validated; errors name the key). ``run_dir``: write the
    run folder there (None: train in memory only). ``resume``: continue from
    ``run_dir/last.safetensors``. ``meta``: extra entries for model.json (e.g. preprocessing).
    ``full_config``: written to config.yaml instead of the train config alone (the CLI passes the
    whole resolved run config; its ``train`` section is replaced by the validated one).
    Raises ``NonFiniteLossError`` naming epoch and step if the loss stops being finite, and
    ``TrainingInterrupted`` (a ``KeyboardInterrupt``) naming the epoch on Ctrl-C.
    """
    cfg = train_config(config)
    run_dir = Path(run_dir) if run_dir is not None else None
    run = _prepare(model, train_data, val_data, cfg, run_dir, resume)
    model_meta = _model_meta(run, meta)
    if resume:
        _resume(run)
    else:
        seed_everything(_ddp.rank_seed(cfg.seed, run.dist_info))
    _write_run_files(run, model_meta, resume, full_config)
    run.t_start = time.perf_counter()
    try:
        with ExitStack() as stack:
            _enter_modes(run, stack, progress)
            run.optimizer.zero_grad(set_to_none=True)
            for epoch in range(run.start_epoch, cfg.epochs):
                if run.stopped:
                    break
                _run_epoch(run, epoch)
                if run.stopped:
                    run.note(f"early stopping: {run.es_monitor} did not improve for {run.es_bad} epoch(s)")
                    break
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        stop = TrainingInterrupted(max(run.epoch, run.start_epoch) + 1, len(run.history), run.kept_checkpoint(),
                                   run.run_dir)
        run.note(str(stop))
        raise stop from None
    return _finish(run)


# ----------------------------------------------------------------------------- set-up steps
def _check_task(cfg: TrainConfig, model: nn.Module, train_data: Dataset, val_data: Dataset | None,
                run_dir: Path | None, resume: bool) -> tuple[str, Any, str, set[str], str | None]:
    """Validate the config against model and data: (task, ordinal head, monitor, known names, es monitor)."""
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir (where last.safetensors is)")
    task = cfg.task or getattr(train_data, "task", None)
    if task is None:
        raise ConfigError("train.task is not set and the dataset has no .task attribute")
    if task not in ("binary", "multiclass", "ordinal", "multilabel"):
        raise ConfigError(f"train.task: unknown task {task!r}")
    head = getattr(model, "ordinal_head", None)
    head_mode = head["mode"] if head else "ce"
    if head_mode != cfg.ordinal:
        raise ConfigError(f"train.ordinal={cfg.ordinal!r} but the model's ordinal head is {head_mode!r}; wrap the "
                          "model with medxai.train.OrdinalHead(backbone, mode, num_classes) (backbone with 1 output)")
    monitor = cfg.monitor
    if val_data is None and monitor.startswith("val_"):
        if "monitor" in cfg.model_fields_set:
            raise ConfigError(f"train.monitor={monitor!r} needs validation data")
        monitor = "train_loss"
    known = {"train_loss", "val_loss", *(f"val_{m}" for m in metric_names(task))}
    if task != "multilabel":
        known.add("train_accuracy")
    es = cfg.early_stopping
    es_monitor = (es.monitor or monitor) if es else None
    if es_monitor and val_data is None and es_monitor.startswith("val_"):
        raise ConfigError(f"train.early_stopping.monitor={es_monitor!r} needs validation data")
    return task, head, monitor, known, es_monitor


def _probe(model: nn.Module, train_data: Dataset, task: str, device: torch.device) -> tuple[int, list[str], list[int]]:
    """Run one item through the model (eval mode, no grad): (num_classes, class_names, input shape)."""
    if len(train_data) == 0:  # type: ignore[arg-type]
        raise ConfigError("the training dataset is empty")
    probe = collate([train_data[0]])
    check_images(probe["image"], "training image", ndim=(4, 5))
    with eval_mode(model), torch.no_grad():
        out = model(probe["image"].to(device))
    if out.ndim != 2:
        raise ConfigError(f"the model must return (B, K) logits, got shape {tuple(out.shape)}")
    num_classes = int(out.shape[1])
    if task == "binary" and num_classes != 2:
        raise ConfigError(f"task 'binary' needs a model with 2 outputs (softmax), got {num_classes}")
    class_names = [str(c) for c in (getattr(train_data, "class_names", None) or range(num_classes))]
    if len(class_names) != num_classes:
        raise ConfigError(f"the dataset has {len(class_names)} classes {class_names} but the model outputs "
                          f"{num_classes} logits")
    return num_classes, class_names, list(probe["image"].shape[1:])


def _loaders(cfg: TrainConfig, train_data: Dataset, val_data: Dataset | None, task: str, num_classes: int,
             dist_info: _ddp.DistInfo) -> tuple[torch.Generator, DataLoader, DataLoader | None, Any]:
    """(order generator, train loader, val loader, class weights for the loss or None)."""
    gen = torch.Generator()
    weights = None
    if cfg.balance != "none":
        labels = labels_of(train_data)
        if cfg.balance == "sampler":
            if task == "multilabel":
                raise ConfigError("train.balance='sampler' is for single-label tasks")
            sampler = WeightedRandomSampler(sample_weights_from_labels(labels, num_classes),
                                            num_samples=len(train_data), replacement=True, generator=gen)
        else:
            weights = class_weights_from_labels(labels, task, num_classes)
    if cfg.balance != "sampler":
        sampler = RandomSampler(train_data, generator=gen)  # type: ignore[arg-type]
    if dist_info.enabled:  # the same epoch order, sharded over the ranks
        sampler = _ddp.ShardedSampler(train_data, dist_info, generator=gen, weights=getattr(sampler, "weights", None))
    loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate, generator=gen, worker_init_fn=_worker_init, drop_last=cfg.drop_last)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size={cfg.batch_size} with drop_last leaves no batch "
                          f"({len(train_data)} samples)")
    val_loader = None if val_data is None else DataLoader(
        _ddp.shard_of(val_data, dist_info), batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
        num_workers=cfg.num_workers, collate_fn=collate)
    return gen, loader, val_loader, weights


def _prepare(model: nn.Module, train_data: Dataset, val_data: Dataset | None, cfg: TrainConfig,
             run_dir: Path | None, resume: bool) -> _Run:
    """Check the config, place the model, build loaders, optimizer, schedules, losses and objective."""
    task, head, monitor, known, es_monitor = _check_task(cfg, model, train_data, val_data, run_dir, resume)
    objective = check_objective(cfg.objective.name, cfg.objective.params())  # before any data is read
    device = _resolve_device(cfg.device)
    dist_info = _ddp.setup()  # torchrun: DDP over WORLD_SIZE processes; else one process, as before
    device = _ddp.device_for(device, dist_info)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    num_classes, class_names, in_shape = _probe(model, train_data, task, device)
    gen, loader, val_loader, weights = _loaders(cfg, train_data, val_data, task, num_classes, dist_info)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameter (everything frozen?)")
    optimizer = _make_optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, len(loader)))
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience)
               if cfg.scheduler == "plateau" else None)
    run = _Run(cfg=cfg, model=model, train_data=train_data, val_data=val_data, task=task, head=head,
               monitor=monitor, known=known, es_monitor=es_monitor, device=device, dist_info=dist_info,
               run_dir=run_dir, num_classes=num_classes, class_names=class_names, in_shape=in_shape, gen=gen,
               loader=loader, val_loader=val_loader, params=params, optimizer=optimizer, sched=sched,
               plateau=plateau,
               loss_fn=build_loss(task, num_classes, class_weights=weights, label_smoothing=cfg.label_smoothing),
               plain_loss=build_loss(task, num_classes),
               objective=objective)
    run.ctx = StepContext(model=_ddp.wrap(model, dist_info, device), optimizer=optimizer, loss_fn=run.loss_fn,
                          backward_step=run.backward_step, autocast=run.autocast, epoch=0, step=0, task=task)
    return run


def _model_meta(run: _Run, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The content of model.json."""
    mcfg = getattr(run.model, "medxai_config", None)
    return {"model": mcfg, "ordinal_head": run.head, "task": run.task,
            "class_names": run.class_names, "num_classes": run.num_classes, "in_chans": run.in_shape[0],
            "input_shape": run.in_shape, "image_size": run.in_shape[1:],
            "normalize": (mcfg or {}).get("normalize"),
            "preprocessing": getattr(run.train_data, "preprocessing", None), **dict(meta or {})}


def _resume(run: _Run) -> None:
    """Restore weights, optimizer, schedules, loop state, RNG states and the log from last.safetensors."""
    last_path, run_dir = run.last_path, run.run_dir
    assert last_path is not None and run_dir is not None  # _check_task made sure
    ck = read_checkpoint(last_path)
    tr = ck.get("train") or {}
    try:
        load_model_state(run.model, ck.model_state, where=str(last_path))
        run.optimizer.load_state_dict(ck.get("optimizer"))
        sch = ck.get("scheduler") or {}
        run.sched.load_state_dict(sch["lambda"])
        if run.plateau is not None and sch.get("plateau") is not None:
            run.plateau.load_state_dict(sch["plateau"])
        run.start_epoch, run.global_step = int(tr["epoch"]), int(tr["global_step"])
        run.best_value, run.best_epoch = tr.get("best_value"), tr.get("best_epoch")
        run.es_best, run.es_bad = tr.get("es_best"), int(tr.get("es_bad", 0))
        run.stopped = bool(tr.get("stopped_early", False))
        run.time_before = float(tr.get("train_time_s", 0.0))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{last_path}: cannot resume from this checkpoint ({exc})") from None
    run.ctx.state.update(ck.get("objective") or {})
    run.history = list(ck.get("history") or [])
    _set_rng_state(ck.get("rng") or {})
    _ddp.restore_rank_rng(ck.get("rng_ranks"), run.dist_info, _set_rng_state, run.cfg.seed, run.start_epoch)
    if (run_dir / "best.safetensors").is_file():
        run.best_state = read_checkpoint(run_dir / "best.safetensors").model_state
    old_log = run_dir / "train.log"
    if old_log.is_file():
        run.log_lines = old_log.read_text(encoding="utf-8").splitlines()
    run.have_last = True
    run.note(f"resumed from {last_path.name} after epoch {run.start_epoch} (step {run.global_step})")


def _write_run_files(run: _Run, model_meta: Mapping[str, Any], resume: bool,
                     full_config: Mapping[str, Any] | None) -> None:
    """config.yaml, model.json, metrics.jsonl (and the first log line) in the run directory (rank 0)."""
    out_dir, cfg = run.out_dir, run.cfg
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_copy(update={"task": run.task}).model_dump(mode="json")
    if full_config is not None:
        resolved = {**dict(full_config), "train": resolved}
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_model_json(out_dir, model_meta)
    run.write_metrics()
    if not resume:
        run.note(f"training {type(run.model).__name__} on {len(run.train_data)} samples ({run.task}, "  # type: ignore[arg-type]
                 f"{run.num_classes} classes), {run.steps_per_epoch} steps/epoch, device {run.device}, "
                 f"objective {cfg.objective.name}")


def _enter_modes(run: _Run, stack: ExitStack, progress: bool) -> None:
    """Deterministic algorithms (restored on exit) and the progress display, on ``stack``."""
    if run.cfg.deterministic:
        det_prev = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
        cudnn_prev = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        stack.callback(lambda: torch.use_deterministic_algorithms(det_prev[0], warn_only=det_prev[1]))
        stack.callback(lambda: setattr(torch.backends.cudnn, "benchmark", cudnn_prev[0]))
        stack.callback(lambda: setattr(torch.backends.cudnn, "deterministic", cudnn_prev[1]))
    if progress and run.dist_info.is_main:
        from medxai._util.progress import progress as make_progress

        run.bars = stack.enter_context(make_progress())
        run.ep_task = run.bars.add_task("epochs", total=run.cfg.epochs, completed=run.start_epoch)
        run.st_task = run.bars.add_task("train", total=run.steps_per_epoch)


# ----------------------------------------------------------------------------- epoch steps
def _run_epoch(run: _Run, epoch: int) -> None:
    """Train one epoch, validate, record, checkpoint and log it."""
    t0 = time.perf_counter()
    run.epoch = epoch
    rec, lr_used = _train_epoch(run, epoch)
    val_batch = _validate(run, rec)
    for k, v in (run.objective.on_epoch_end(run.ctx, val_batch) or {}).items():
        rec.setdefault(k, float(v))
    rec["lr"] = lr_used  # the rate of the epoch's last update
    rec["time_s"] = time.perf_counter() - t0
    rec = _ddp.from_main(rec, run.dist_info)  # every rank takes rank 0's record: one set of decisions
    value = _record(run, epoch, rec)
    _save(run, epoch)
    shown = f"{run.monitor} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
    run.note(f"epoch {epoch + 1}/{run.cfg.epochs} train_loss {rec['train_loss']:.4f} "
             + (f"val_loss {rec['val_loss']:.4f} " if "val_loss" in rec else "") + shown
             + f" lr {rec['lr']:.3g} ({rec['time_s']:.1f}s)" + (" best" if run.best_epoch == epoch + 1 else ""))
    if run.bars is not None:
        run.bars.update(run.ep_task, advance=1, description=f"epochs ({shown})")


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, Any], float]:
    """One pass over the training order: (the epoch's record so far, lr of its last update)."""
    cfg, device, bars = run.cfg, run.device, run.bars
    run.model.train()
    run.gen.manual_seed(derive_seed(cfg.seed, "train-order", epoch))
    tot_loss, tot_n, correct, counted = 0.0, 0, 0, 0
    extra_sum: dict[str, float] = {}
    if bars is not None:
        bars.reset(run.st_task, total=run.steps_per_epoch, description=f"epoch {epoch + 1}/{cfg.epochs}")
    for step, batch in enumerate(run.loader):
        run.epoch, run.step = epoch, step
        run.ctx.epoch, run.ctx.step = epoch, step
        x = check_images(batch["image"], "training batch", ndim=(4, 5)).to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["label"].to(device, non_blocking=True)
        try:
            out = run.objective.train_step(run.ctx, x, y)
        except NonFiniteLossError as exc:
            run.note(str(exc))
            raise
        if not math.isfinite(out.loss):
            exc = NonFiniteLossError(epoch + 1, step + 1, out.loss, run.kept_checkpoint())
            run.note(str(exc))
            raise exc
        b = x.shape[0]
        tot_loss += out.loss * b
        tot_n += b
        for k, v in out.extra.items():
            extra_sum[k] = extra_sum.get(k, 0.0) + float(v) * b
        if out.logits is not None and run.task != "multilabel":
            correct += int((out.logits.argmax(1) == y).sum())
            counted += b
        lr_used = run.optimizer.param_groups[0]["lr"]
        if run.plateau is None or run.global_step < run.warm_steps:
            run.sched.step()
        run.global_step += 1
        if bars is not None:
            bars.update(run.st_task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} "
                        f"loss {tot_loss / tot_n:.4f}")
    if run.dist_info.enabled:  # the sums of every shard; one set of BatchNorm statistics
        tot_loss, tot_n, correct, counted, extra_sum = _ddp.sum_epoch(run.dist_info, tot_loss, tot_n, correct,
                                                                      counted, extra_sum)
        _ddp.average_buffers(run.model, run.dist_info)
    rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tot_loss / max(tot_n, 1)}
    if counted:
        rec["train_accuracy"] = correct / counted
    rec.update({k: v / max(tot_n, 1) for k, v in extra_sum.items() if k not in rec})
    return rec, lr_used


def _validate(run: _Run, rec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Add val_loss and val metrics to ``rec``; return the first validation batch (None: no val data)."""
    if run.val_loader is None or run.val_data is None:
        return None
    val_data = run.val_data
    _, yv, logits = _ddp.forward_all(run.model, run.val_loader, run.dist_info, len(val_data),  # type: ignore[arg-type]
                                     device=run.device, autocast=run.autocast, channels_last=run.cfg.channels_last)
    rec["val_loss"] = float(run.plain_loss(logits, yv))
    scores = probabilities(logits, run.task).numpy()
    ev = classification(yv.numpy(), scores, run.task, run.class_names, n_boot=0)
    rec.update({f"val_{k}": v for k, v in ev["metrics"].items()})
    if run.first_val is None:
        first = collate([val_data[i] for i in range(min(len(val_data), run.cfg.batch_size))])  # type: ignore
        run.first_val = (first["image"].to(run.device), first["label"].to(run.device))
    return run.first_val


def _record(run: _Run, epoch: int, rec: dict[str, Any]) -> Any:
    """Append ``rec`` to the history; update best weights, early stopping and the plateau schedule.
    Returns the monitored value."""
    monitor, es = run.monitor, run.cfg.early_stopping
    if monitor not in rec:
        raise ConfigError(f"train.monitor={monitor!r} is not a logged value; known: "
                          f"{', '.join(sorted(set(rec) | run.known - {'epoch', 'lr', 'time_s'}))}")
    run.history.append(rec)
    value = rec[monitor]
    if _better_fn(monitor, run.cfg.mode)(value, run.best_value):
        run.best_value, run.best_epoch = float(value), epoch + 1
        run.best_state = {k: v.detach().to("cpu").clone() for k, v in run.model.state_dict().items()}
        if run.out_dir is not None:
            save_checkpoint(run.out_dir / "best.safetensors", run.model,
                            meta={"train": {"epoch": epoch + 1, "monitor": monitor, "value": run.best_value}})
    if es is not None:
        ev_value = rec.get(run.es_monitor)  # type: ignore[arg-type]
        if _better_fn(run.es_monitor, es.mode)(ev_value, run.es_best, es.min_delta):  # type: ignore[arg-type]
            run.es_best, run.es_bad = float(ev_value), 0  # type: ignore[arg-type]
        else:
            run.es_bad += 1
            if run.es_bad >= es.patience:
                run.stopped = True
    if run.plateau is not None and run.global_step >= run.warm_steps:
        run.plateau.step(rec.get("val_loss", rec["train_loss"]))
    return value


def _save(run: _Run, epoch: int) -> None:
    """Write last.safetensors (every rank's RNG state; rank 0 writes) and metrics.jsonl."""
    rng_ranks = _ddp.gather_rng(_rng_state(), run.dist_info)  # every rank takes part
    if run.out_dir is None:
        return
    train_state = {"epoch": epoch + 1, "global_step": run.global_step, "best_value": run.best_value,
                   "best_epoch": run.best_epoch, "es_best": run.es_best, "es_bad": run.es_bad,
                   "stopped_early": run.stopped, "train_time_s": run.time_before + (time.perf_counter() - run.t_start),
                   "config": run.cfg.model_dump(mode="json")}
    save_checkpoint(run.last_path, run.model,  # type: ignore[arg-type]
                    states={"optimizer": run.optimizer.state_dict(),
                            "scheduler": {"lambda": run.sched.state_dict(),
                                          "plateau": run.plateau.state_dict() if run.plateau else None},
                            "rng": _rng_state(), "objective": _packable(run.ctx.state),
                            **({"rng_ranks": rng_ranks} if rng_ranks else {})},
                    meta={"train": train_state, "history": run.history})
    run.have_last = True
    run.write_metrics()


def _finish(run: _Run) -> TrainResult:
    """Restore the best weights (``restore_best``), write summary.json, return the result."""
    cfg, monitor = run.cfg, run.monitor
    train_time = run.time_before + (time.perf_counter() - run.t_start)
    restored = bool(cfg.restore_best and run.best_state is not None)
    if restored:
        load_model_state(run.model, run.best_state, where="best weights")  # type: ignore[arg-type]
    if run.out_dir is not None:
        atomic_write_json(run.out_dir / "summary.json", {
            "epochs_run": len(run.history), "best_epoch": run.best_epoch, "best_value": run.best_value,
            "monitor": monitor, "stopped_early": run.stopped, "train_time_s": train_time, "restored_best": restored})
        run.note(f"done: {len(run.history)} epoch(s), best {monitor} {run.best_value} at epoch {run.best_epoch}, "
                 f"{train_time:.1f}s")
    return TrainResult(model=run.model, history=run.history, monitor=monitor, best_epoch=run.best_epoch,
                       best_value=run.best_value, epochs_run=len(run.history), stopped_early=run.stopped,
                       train_time_s=train_time, run_dir=run.run_dir, task=run.task, class_names=run.class_names)
