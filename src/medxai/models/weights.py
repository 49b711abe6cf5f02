"""Load local checkpoints of other libraries into medxai models, safely.

Files: ``.safetensors`` (``safetensors.torch.load_file``) or ``.pth``/``.pt`` through
``torch.load(weights_only=True)``: a pickle that would build arbitrary objects (and so could run
code) is refused with ``CheckpointError``; other suffixes are refused. A medxai run's own
``best.safetensors`` / ``last.safetensors`` gives its model weights (the ``model/`` tensors). Whole
programs (TorchScript archives, ``torch.export`` programs, ONNX files) are refused with a pointer to
model cards, which audit them as they are.

Layouts: nested dicts (``state_dict``, ``model``, ``teacher``, ...) are unwrapped, prefixes such
as ``module.`` / ``_orig_mod.`` / ``backbone.`` are stripped when that makes more keys match, and
names are mapped per architecture family:
- ResNet: torchvision = timm = medxai (MONAI 2-D ResNet with torchvision names);
- DenseNet-121: torchvision (also the old ``norm.1`` names) -> MONAI ``denselayerN.layers.*``,
  ``classifier`` -> ``class_layers.out``;
- EfficientNet: MONAI, or lukemelas ``efficientnet_pytorch`` (flat ``_blocks.N``) -> nested per stage
  (torchvision / timm EfficientNets are not mapped: they pad symmetrically and use other BatchNorm
  eps, so their weights would compute something else here; use ``torchvision:`` / ``timm:`` names);
- ViT: timm ``vit_base_patch16_224``, DINO ``dino_vitbase16_pretrain.pth`` (no head) and MAE
  ``mae_pretrain_vit_base.pth`` (under ``model``, no head; ``fc_norm`` when fine-tuned with global
  pooling) all use timm names; position embeddings of another grid are resampled (bicubic, as timm);
- MobileNetV2, Inception-v3: torchvision names.
A classifier head of another shape is dropped (reported); the first conv / patch projection is
adapted to the model's input channels (summed over RGB for 1 channel, as timm's adapt_input_conv);
any other shape mismatch is an error naming the key and both shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medxai.errors import CheckpointError

__all__ = ["LoadReport", "adapt_input_conv", "check_weights_file", "load_weights", "read_state_dict"]

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "teacher", "module", "student", "net", "network",
                "state_dict_ema", "model_ema", "ema")
_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "net.", "base_model.")
_IGNORED_MISSING = ("num_batches_tracked",)
# medxai.runs.FORMAT, written here as a literal: models sits below runs in the import layers
_MEDXAI_CHECKPOINT = "medxai.checkpoint/1"
_CARD_HINT = ("to audit it as it is, write a model card (medxai audit --model card.yaml; see README 'Audit your own "
              "model'); to train from its weights, save them with torch.save(model.state_dict()) or as .safetensors")


@dataclass
class LoadReport:
    """What ``load_weights`` did. Key names are the model's (after mapping)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.source}: loaded {len(self.loaded)} tensors, missing {len(self.missing)}, unexpected "
                f"{len(self.unexpected)}, head dropped {self.dropped_head or 'no'}, adapted {self.adapted or 'none'}")


# --------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict (nested layouts unwrapped)."""
    p = Path(path)
    check_weights_file(p)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        obj = _read_safetensors(p)
    elif suffix in (".pth", ".pt"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:
            msg = str(err)
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", msg)
            # torch's own advice (retry with weights_only=False, allowlist globals) is never echoed
            lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and "weights_only" not in ln
                     and "safe_globals" not in ln and not ln.strip().startswith("Check the documentation")]
            detail_s = detail.group(1).strip() if detail else (lines or [type(err).__name__])[0]
            # torch words it "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module
            # ... is blocked"; either way the pickle names a callable
            glob = re.search(r"GLOBAL (\S+)", msg)
            if glob or "Unsupported global" in msg:
                raise CheckpointError(
                    f"{p}: refused: the file pickles a call to {glob.group(1) if glob else 'a Python object'}, "
                    "and unpickling it could run code; only tensors and plain containers are read "
                    "(torch.load(weights_only=True)). Re-save the weights with torch.save(model.state_dict()) "
                    "or as .safetensors."
                ) from None
            raise CheckpointError(f"{p}: cannot read as a weights-only PyTorch file, refused ({detail_s})") from None
    else:
        raise CheckpointError(f"{p}: unsupported checkpoint type {suffix or '(no suffix)'!r}; "
                              "use .safetensors, .pth or .pt")
    return _flatten(obj, str(p))


def check_weights_file(path: str | Path) -> None:
    """Cheap checks of a ``pretrained`` path before anything is built: the file exists and is not a
    whole program (TorchScript, ``torch.export``, ONNX: those are audited through a model card)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    kind = _program_kind(p)
    if kind is not None:
        raise CheckpointError(f"{p}: is {kind}, not a state dict: {_CARD_HINT}")


def _program_kind(p: Path) -> str | None:
    """'a TorchScript archive' / 'a torch.export program' / 'an ONNX model' when the file is a
    whole program (a model card's formats) rather than weights; None otherwise."""
    import zipfile

    if p.suffix.lower() == ".onnx":
        return "an ONNX model"
    if not zipfile.is_zipfile(p):
        return None
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.endswith("/archive_format") or n.endswith("/serialized_exported_program.json")
           or "/models/model.json" in n for n in names):
        return "a torch.export program"
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "a TorchScript archive"
    return None


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a medxai checkpoint (a run's best/last.safetensors,
    metadata ``format`` medxai.checkpoint/1) gives its model weights (``model/`` prefix stripped)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
        obj = load_file(str(p), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{p}: not a readable safetensors file ({err})") from None
    if metadata.get("format") == _MEDXAI_CHECKPOINT:
        obj = {k[len("model/"):]: v for k, v in obj.items() if k.startswith("model/")}
        if not obj:
            raise CheckpointError(f"{p}: a medxai checkpoint without model weights (no model/ tensors)")
    return obj


def _flatten(obj: object, source: str) -> dict[str, torch.Tensor]:
    for _ in range(6):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: expected a state dict (a mapping of names to tensors), "
                                  f"got {type(obj).__name__}")
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        nxt = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping) and obj.get(k)), None)
        if nxt is None:
            raise CheckpointError(f"{source}: no tensors found; top-level keys: {sorted(map(str, obj))[:12]}")
        obj = obj[nxt]
    raise CheckpointError(f"{source}: state dict nested too deeply")


# --------------------------------------------------------------------------- key mapping
def _map_densenet(k: str) -> str:
    k = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", k)  # old torchvision names
    k = re.sub(r"(denseblock\d+\.denselayer\d+)\.(norm1|conv1|norm2|conv2)\.", r"\1.layers.\2.", k)
    return re.sub(r"^classifier\.", "class_layers.out.", k)


def _efficientnet_index(model: nn.Module) -> list[str]:
    blocks = getattr(model, "_blocks", None)
    if blocks is None:
        return []
    # MONAI numbers blocks globally inside each stage: _blocks.1.1, _blocks.1.2, _blocks.2.3, ...
    return [f"_blocks.{s}.{name}." for s, stage in enumerate(blocks) for name in stage._modules]


def _map_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    family = getattr(model, "medxai_family", "")
    if family == "densenet":
        return {_map_densenet(k): v for k, v in sd.items()}
    if family == "efficientnet":
        nested = _efficientnet_index(model)
        out = {}
        for k, v in sd.items():
            m = re.match(r"^_blocks\.(\d+)\.(?!\d)", k)
            if m and int(m.group(1)) < len(nested):
                k = nested[int(m.group(1))] + k[m.end():]
            out[k] = v
        return out
    return dict(sd)


def _best_prefixes(sd: dict[str, torch.Tensor], model: nn.Module, targets: set[str]) -> dict[str, torch.Tensor]:
    """Strip (or, for wrapped third-party models, add) key prefixes while that matches more keys."""
    def score(d: dict[str, torch.Tensor]) -> int:
        return len(set(_map_keys(d, model)) & targets)

    best, best_score = sd, score(sd)
    for _ in range(4):
        candidates = []
        for p in _PREFIXES:
            if any(k.startswith(p) for k in best):
                candidates.append({(k[len(p):] if k.startswith(p) else k): v for k, v in best.items()})
        if any(t.startswith("net.") for t in targets):
            candidates.append({"net." + k: v for k, v in best.items()})
        scored = [(score(c), i) for i, c in enumerate(candidates)]
        if not scored:
            break
        s, i = max(scored, key=lambda t: (t[0], -t[1]))
        if s <= best_score:
            break
        best, best_score = candidates[i], s
    return best


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """First-layer weights (O, I, kh, kw) -> (O, in_chans, kh, kw) as timm's ``adapt_input_conv``:
    summed over the input channels for 1 channel; for more, the RGB filters repeated and scaled by
    I / in_chans so that the response to a constant image is unchanged.
    """
    i = weight.shape[1]
    if in_chans == i:
        return weight
    w = weight.float()
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True).to(weight.dtype)
    rep = math.ceil(in_chans / i)
    w = w.repeat(1, rep, 1, 1)[:, :in_chans] * (i / float(in_chans))
    return w.to(weight.dtype)


def _resample_pos(v: torch.Tensor, t: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    from medxai.models.vit import resample_pos_embed

    pe = getattr(model, "patch_embed", None)
    if pe is None or v.ndim != 3 or v.shape[-1] != t.shape[-1]:
        return None
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    n_src = v.shape[1] - prefix
    side = math.isqrt(max(n_src, 0))
    if n_src <= 0 or side * side != n_src:
        return None
    out = resample_pos_embed(v, pe.grid_size, (side, side), prefix)
    return out if out.shape == t.shape else None


# --------------------------------------------------------------------------- loading
def load_weights(model: nn.Module, path_or_state_dict: str | Path | Mapping, *,
                 strict_backbone: bool = True) -> LoadReport:
    """Load a checkpoint into ``model`` in place and say what happened.

    ``strict_backbone``: every model tensor outside the classifier head (and ``fc_norm``) must be
    found, else ``CheckpointError`` (False: load what matches, report the rest as missing).
    Raises ``CheckpointError`` when nothing matches or a tensor has the wrong shape.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        sd = read_state_dict(path_or_state_dict)
    elif isinstance(path_or_state_dict, Mapping):
        source = "<state dict>"
        sd = _flatten(path_or_state_dict, source)
    else:
        raise CheckpointError(f"expected a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}")

    target = model.state_dict()
    mapped = _map_keys(_best_prefixes(sd, model, set(target)), model)
    head_mods = tuple(getattr(model, "medxai_head", ()))
    head_prefixes = tuple(h + "." for h in head_mods)
    input_keys = {f"{n}.weight" for n in getattr(model, "medxai_input_layers", ())}
    report = LoadReport(source)
    new: dict[str, torch.Tensor] = {}
    for k, v in mapped.items():
        if k not in target:
            report.unexpected.append(k)
            continue
        t = target[k]
        if v.shape == t.shape:
            new[k] = v
        elif k.startswith(head_prefixes):
            report.dropped_head.append(k)
        elif k in input_keys and v.ndim == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            new[k] = adapt_input_conv(t.shape[1], v)
            report.adapted.append(f"{k}: {v.shape[1]} -> {t.shape[1]} input channels")
        elif k == "pos_embed" and (r := _resample_pos(v, t, model)) is not None:
            new[k] = r
            report.adapted.append(f"pos_embed: {tuple(v.shape)} -> {tuple(t.shape)} (bicubic resampling)")
        else:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)} in the checkpoint but "
                                  f"{tuple(t.shape)} in the model")
    # a head is loaded whole or not at all
    for h in head_prefixes:
        if any(k.startswith(h) for k in report.dropped_head):
            for k in [k for k in new if k.startswith(h)]:
                report.dropped_head.append(k)
                del new[k]
    report.dropped_head.sort()
    if not new:
        raise CheckpointError(f"{source}: no tensor matched the model "
                              f"(checkpoint keys e.g. {list(sd)[:3]}, model keys e.g. {list(target)[:3]})")
    report.missing = [k for k in target if k not in new and not k.endswith(_IGNORED_MISSING)]
    if strict_backbone:
        backbone_missing = [k for k in report.missing if not k.startswith(head_prefixes)]
        if backbone_missing:
            raise CheckpointError(
                f"{source}: {len(backbone_missing)} model tensors outside the head are not in the checkpoint "
                f"(e.g. {backbone_missing[:5]}); pass strict_backbone=False to load it partially")
    with torch.no_grad():
        model.load_state_dict(new, strict=False)
    report.loaded = [k for k in target if k in new]
    return report
