"""``medxai.audit()``: the audit from Python, on modules, cards or run directories and a dataset.

    import medxai
    result = medxai.audit(models={"mine": my_module}, data="data/test_folder", out="runs/mine",
                          attack={"eps": ["1/255", "2/255"]}, explain={"methods": ["saliency", "gradcam"]})
    result.report["models"]["mine"]["metrics"]

The same run directory and report.html as ``medxai audit``; stages are cached the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medxai.errors import ConfigError
from medxai.pipeline.audit import AuditResult, run_audit
from medxai.pipeline.config import load_config, read_config_dict

__all__ = ["audit"]


def _model_entry(name: str, obj: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The config entry of one model; cards and modules given as objects go into ``given``."""
    from torch import nn

    from medxai.cards import ModelCard

    if isinstance(obj, (nn.Module, ModelCard)):
        given[name] = obj
        return {"name": name, "given": True}
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if path.is_dir() and (path / "model.json").is_file():
            given[name] = _run_card(path)
            return {"name": name, "given": True}
        return {"name": name, "card": str(path)}
    raise ConfigError(f"models[{name!r}]: expected a torch.nn.Module, a card YAML path, a ModelCard or a medxai "
                      f"run directory, got {type(obj).__name__}")


def _run_card(run_dir: Path) -> Any:
    """A card for a medxai run directory (format run; its size and classes from model.json)."""
    from medxai.cards import read_card
    from medxai.runs import read_model_json

    meta = read_model_json(run_dir)
    size = meta.get("image_size") or []
    chans = int((meta.get("model") or {}).get("in_chans", 3))
    if not size:
        raise ConfigError(f"{run_dir}: model.json does not record the image size; write a card for it")
    return read_card({"path": str(run_dir.resolve()), "format": "run", "task": meta["task"],
                      "classes": [str(c) for c in meta["class_names"]],
                      "input": {"size": [int(size[0]), int(size[-1])], "channels": chans}})


def audit(models: Mapping[str, Any], data: Any, out: str | Path = "runs/audit", *,
          config: str | Path | Mapping[str, Any] | None = None, split: str = "test",
          positive_class: str | None = None, force: set[str] | None = None, **options: Any) -> AuditResult:
    """Audit models as they are (no training) on ``data`` into ``out``; returns the report's numbers.

    ``models``: name -> an ``nn.Module`` ([0, 1] images (B, C, H, W) in, logits in the data's class
    order out, normalisation inside), a card YAML path, a ``ModelCard`` or a medxai run directory.
    ``data``: a dataset spec (folder, YAML, dict) or a dataset object (``medxai.data.open_dataset``,
    ``SyntheticDataset``). ``config``: an audit YAML or mapping (its ``models`` are audited too);
    ``positive_class``: binary tasks: the class binary metrics call positive (default: a card's, else
    the data's second class). ``options``: config sections to override (``attack={...}``,
    ``explain={...}``, ``seed=1``...).
    """
    raw: dict[str, Any] = dict(read_config_dict(config) if isinstance(config, (str, Path)) else config or {})
    raw.setdefault("name", "audit")
    for key, value in options.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and isinstance(value, dict) else value
    given: dict[str, Any] = {}
    raw["models"] = list(raw.get("models") or []) + [_model_entry(n, m, given) for n, m in models.items()]
    dataset = None
    data_section = dict(raw.get("data") or {}, split=split)
    if positive_class is not None:
        data_section["positive_class"] = positive_class
    if isinstance(data, (str, Path, dict)):
        data_section.update(spec=str(data) if isinstance(data, Path) else data, use="real")
    else:
        dataset = data
    raw["data"] = data_section
    return run_audit(load_config(raw), out, force=force, given=given, dataset=dataset)
