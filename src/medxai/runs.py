"""Run directories and checkpoints: safetensors tensors + JSON metadata, never pickle.

One module that training (writes), evaluation, the CLI and the audit (read) all use; it sits
above ``medxai.models`` (``build_model`` calls ``models.create``) and below everything that
trains or reads runs.

A checkpoint file holds tensors under prefixes (``model/``, ``optimizer/``, ``scheduler/``,
``rng/``, ``objective/``) and, in the safetensors header metadata, ``format`` and one JSON
string per nested state (``optimizer``, ``scheduler``, ``rng``, ``objective``, ``train``...).
Nested Python state (optimizer/scheduler state dicts, RNG states) is encoded by ``pack``: each
tensor (or numpy array) is stored as a named tensor and replaced in the JSON by a reference;
tuples, non-string dict keys and non-finite floats are tagged so that ``unpack`` restores them
exactly. A run directory has ``model.json`` (what rebuilds the model) and ``best.safetensors`` /
``last.safetensors``; ``load_run`` rebuilds the model from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medxai._util.io import atomic_write_json, save_safetensors
from medxai.errors import CheckpointError

FORMAT = "medxai.checkpoint/1"
MODEL_FORMAT = "medxai.model/1"


# ----------------------------------------------------------------------------- nested state <-> tensors + JSON
def pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Encode nested state as JSON-able data; tensors go into ``tensors`` under ``prefix/...``."""
    counter = [0]

    def enc(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            name = f"{prefix}/{counter[0]}"
            counter[0] += 1
            tensors[name] = v.detach().to("cpu").clone().contiguous()
            return {"__tensor__": name}
        if isinstance(v, np.ndarray):
            name = f"{prefix}/{counter[0]}"
            counter[0] += 1
            tensors[name] = torch.from_numpy(np.ascontiguousarray(v).copy())
            return {"__ndarray__": name}
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: enc(x) for k, x in v.items()}
            return {"__items__": [[enc(k), enc(x)] for k, x in v.items()]}
        raise CheckpointError(f"cannot store a {type(v).__name__} in a checkpoint (under {prefix!r})")

    return enc(obj)


def unpack(data: Any, tensors: Mapping[str, torch.Tensor], *, where: str = "checkpoint") -> Any:
    """Inverse of ``pack``. Missing tensor references raise ``CheckpointError``."""

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise CheckpointError(f"{where}: metadata refers to a missing tensor {name!r}")
        return tensors[name]

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if len(v) == 1:
                (tag, inner), = v.items()
                if tag == "__tensor__":
                    return tensor(inner).clone()
                if tag == "__ndarray__":
                    return tensor(inner).numpy().copy()
                if tag == "__float__":
                    if inner not in ("inf", "-inf", "nan"):
                        raise CheckpointError(f"{where}: bad float tag {inner!r}")
                    return float(inner)
                if tag == "__tuple__":
                    return tuple(dec(x) for x in inner)
                if tag == "__items__":
                    return {_hashable(dec(k)): dec(x) for k, x in inner}
            return {k: dec(x) for k, x in v.items()}
        return v

    return dec(data)


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


# ----------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, model: nn.Module, *, states: Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict under ``model/`` plus each nested ``states[name]`` (packed under
    ``name/``) and JSON ``meta`` entries, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().to("cpu").clone().contiguous()
    metadata = {"format": FORMAT}
    for name, state in (states or {}).items():
        metadata[name] = json.dumps(pack(state, name, tensors), allow_nan=False)
    for name, value in (meta or {}).items():
        if name in metadata:
            raise ValueError(f"metadata key {name!r} used twice")
        metadata[name] = json.dumps(pack(value, f"meta-{name}", tensors), allow_nan=False)
    return save_safetensors(path, tensors, metadata)


@dataclass
class Checkpoint:
    """A checkpoint read back: ``model_state`` (name -> tensor), decoded ``states`` and ``meta``."""

    path: Path
    model_state: dict[str, torch.Tensor]
    entries: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.entries.get(name, default)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a medxai checkpoint; anything malformed raises ``CheckpointError`` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a medxai checkpoint (format {metadata.get('format')!r}, want {FORMAT!r})")
    entries: dict[str, Any] = {}
    for name, text in metadata.items():
        if name == "format":
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata {name!r} is not valid JSON ({exc})") from None
        entries[name] = unpack(data, tensors, where=f"{path} [{name}]")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if not model_state:
        raise CheckpointError(f"{path}: holds no model weights")
    return Checkpoint(path=path, model_state=model_state, entries=entries)


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str = "checkpoint") -> None:
    """Load weights strictly; missing/unexpected keys or wrong shapes raise ``CheckpointError``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) e.g. {k}: checkpoint {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"{where}: weights do not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])


# ----------------------------------------------------------------------------- run directories
@dataclass
class RunInfo:
    """What ``load_run`` knows about a run: its folder, the model.json content and the checkpoint."""

    run_dir: Path
    task: str
    class_names: list[str]
    model_config: dict[str, Any] | None
    meta: dict[str, Any]
    checkpoint: Path
    epoch: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def write_model_json(run_dir: str | Path, meta: Mapping[str, Any]) -> Path:
    data = {"format": MODEL_FORMAT, **meta}
    return atomic_write_json(Path(run_dir) / "model.json", data)


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {run_dir} a medxai run directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a medxai model description (format {MODEL_FORMAT!r} expected)")
    for key in ("task", "class_names"):
        if key not in data:
            raise CheckpointError(f"{path}: missing key {key!r}")
    return data


def build_model(meta: Mapping[str, Any]) -> nn.Module:
    """Rebuild the (untrained) model described by a model.json dict via ``medxai.models.create``."""
    cfg = meta.get("model")
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise CheckpointError("model.json has no model config (the model had no medxai_config); "
                              "pass model= to load_run to load the weights into your own module")
    from medxai.models import create
    kwargs = dict(cfg)
    head = meta.get("ordinal_head")
    model = create(**kwargs)
    if head:
        from medxai.models.heads import OrdinalHead

        model = OrdinalHead(model, head["mode"], int(head["num_classes"]))
    return model


def load_run(run_dir: str | Path, *, which: str = "best", model: nn.Module | None = None,
             device: str | torch.device | None = None) -> tuple[nn.Module, RunInfo]:
    """Rebuild the trained model of a run directory: ``(model in eval mode, RunInfo)``.

    ``which``: ``best`` (falls back to ``last`` when no best exists) or ``last``. ``model``: load
    the weights into this module instead of rebuilding it from model.json.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if which not in ("best", "last"):
        raise CheckpointError(f"which must be 'best' or 'last', got {which!r}")
    meta = read_model_json(run_dir)
    path = run_dir / f"{which}.safetensors"
    if which == "best" and not path.is_file():
        path = run_dir / "last.safetensors"
    ckpt = read_checkpoint(path)
    if model is None:
        model = build_model(meta)
    load_model_state(model, ckpt.model_state, where=str(path))
    if device is not None:
        model.to(device)
    model.eval()
    info = RunInfo(run_dir=run_dir, task=str(meta["task"]), class_names=[str(c) for c in meta["class_names"]],
                   model_config=meta.get("model"), meta=meta, checkpoint=path,
                   epoch=(ckpt.get("train") or {}).get("epoch"))
    return model, info
