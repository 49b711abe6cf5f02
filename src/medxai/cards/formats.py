"""Readers of model files by the card's ``format``: each returns the bare network (CPU, eval mode).

What runs when a file is read (SECURITY.md says the same):

- ``torchscript``: ``torch.jit.load``; the archive holds TorchScript code, which the TorchScript
  interpreter runs; no Python code of the file's author is imported or executed.
- ``exported``: ``torch.export.load`` of a ``.pt2`` program (an ATen graph and its weights); no
  Python code of the author runs. The program is unflattened so its submodules (and hooks) exist.
- ``onnx``: parsed by ``onnx`` and interpreted by ``medxai.cards.onnx_graph`` with torch ops (so
  gradients flow), cross-checked against ``onnxruntime`` by the loader.
- ``state_dict``: ``.safetensors``, or ``.pt``/``.pth`` through ``torch.load(weights_only=True)``;
  the architecture comes from ``arch``; ``module:callable`` imports the user's module, allowed
  only with ``trust_code: true``.
- ``run``: a medxai run directory (``medxai.runs.load_run``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable

import torch
from torch import nn

from medxai.cards.card import ModelCard
from medxai.errors import CheckpointError, MedxaiError, ModelError

__all__ = ["READERS", "check_archive", "check_onnx_external_data", "first_line", "n_outputs_for"]


def first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def n_outputs_for(card: ModelCard) -> int:
    """How many outputs an architecture built from ``arch`` gets: 2 for binary (as the zoo), else K."""
    return 2 if card.task == "binary" else len(card.classes)


#: archive limits checked before torch reads a TorchScript / torch.export zip (a zip bomb or a
#: member path that leaves the archive is refused first)
MAX_MEMBERS = 100_000
MAX_UNPACKED = 16 * 2**30  # bytes


def check_archive(path: str) -> None:
    """Refuse a model zip with too many members, members whose unpacked size is too large in total
    or out of proportion to the file (a zip bomb), or member names that are absolute or use '..'."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a zip archive as TorchScript / torch.export files are ({first_line(exc)})") \
            from None
    if len(infos) > MAX_MEMBERS:
        raise ModelError(f"{path}: {len(infos)} archive members (more than {MAX_MEMBERS}): refused")
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    if total > MAX_UNPACKED or total > 200 * packed + 2**20:
        raise ModelError(f"{path}: the archive unpacks to {total / 2**30:.1f} GiB from {packed / 2**20:.1f} MiB: "
                         "refused (a zip bomb?)")
    bad = [i.filename for i in infos if i.filename.startswith(("/", "\\")) or ".." in i.filename.split("/")]
    if bad:
        raise ModelError(f"{path}: archive member {bad[0]!r} leaves the archive: refused")


def check_onnx_external_data(path: str) -> None:
    """Refuse an ONNX file whose external-data locations leave the model's folder (the onnx
    path-traversal class of bugs), before onnx reads any of them."""
    from pathlib import Path

    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return  # onnx_to_torch says how to install it
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    folder = Path(path).resolve().parent
    for t in model.graph.initializer:
        if not uses_external_data(t):
            continue
        where = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (folder / where).resolve()
        if Path(where).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{path}: initializer {t.name!r} keeps its data at {where!r}, outside the model's folder: "
                             "refused")


def read_torchscript(card: ModelCard) -> nn.Module:
    check_archive(card.path)
    try:
        return torch.jit.load(card.path, map_location="cpu").eval()
    except Exception as exc:  # torch raises RuntimeError / ValueError / zipfile errors
        raise ModelError(f"{card.path}: not a readable TorchScript archive ({first_line(exc)})") from None


def read_exported(card: ModelCard) -> nn.Module:
    check_archive(card.path)
    try:
        program = torch.export.load(card.path)
    except Exception as exc:
        raise ModelError(f"{card.path}: not a readable torch.export program ({first_line(exc)})") from None
    try:
        net = torch.export.unflatten(program)  # keeps the submodule hierarchy: hooks (Grad-CAM) work
    except Exception:  # fall back to the flat graph (no submodules to hook)
        net = program.module()
    return net


def read_onnx(card: ModelCard) -> nn.Module:
    from medxai.cards.onnx_graph import onnx_to_torch

    check_onnx_external_data(card.path)
    return onnx_to_torch(card.path).eval()


def read_run(card: ModelCard) -> nn.Module:
    from medxai.runs import load_run

    if card.input.normalize != "none":
        raise ModelError(f"{card.path}: a medxai run normalises its input inside the model; "
                         f"the card's input.normalize must be none (got {card.input.normalize!r})")
    if card.output != "logits":
        raise ModelError(f"{card.path}: a medxai run returns logits; the card's output must be logits")
    model, info = load_run(card.path)
    if info.class_names != card.classes or info.task != card.task:
        raise ModelError(f"{card.path}: the run was trained for {info.task} {info.class_names}, "
                         f"the card says {card.task} {card.classes}")
    return model


def read_state_dict(card: ModelCard) -> nn.Module:
    from medxai.models import read_state_dict as read_weights
    from medxai.runs import load_model_state

    try:
        state = read_weights(card.path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    net = _build_arch(card)
    try:
        load_model_state(net, _strip_prefix(state, net), where=card.path)
    except CheckpointError as exc:
        raise ModelError(f"{exc} (arch {card.arch})") from None
    return net.eval()


def _strip_prefix(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel) or ``model.`` prefix that every key carries and the net's don't."""
    own = set(net.state_dict())
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not own & set(state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _build_arch(card: ModelCard) -> nn.Module:
    arch, k, c = str(card.arch), n_outputs_for(card), card.input.channels
    if arch.startswith("monai:"):
        return _build_monai(arch[len("monai:"):], k, c)
    if card.user_code:
        return _build_user(card)
    from medxai.models import create

    try:  # zoo names and timm:/torchvision:NAME; the card's normalisation is applied outside
        return create(arch, k, in_chans=c, normalize="none")
    except MedxaiError as exc:
        raise ModelError(f"{card.path}: arch {arch!r}: {exc}") from None


def _build_monai(name: str, k: int, c: int) -> nn.Module:
    import monai.networks.nets as nets

    cls = getattr(nets, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ModelError(f"arch monai:{name}: monai.networks.nets has no network {name!r}")
    params = inspect.signature(cls.__init__).parameters
    kw = {key: v for key, v in (("spatial_dims", 2), ("in_channels", c), ("out_channels", k), ("num_classes", k))
          if key in params}
    return cls(**kw)


def _build_user(card: ModelCard) -> nn.Module:
    """``module:callable`` from the card's folder; imported only when the card says trust_code."""
    module_name, _, attr = str(card.arch).partition(":")
    if not card.trust_code:
        raise ModelError(f"{card.path}: arch {card.arch!r} imports your module {module_name!r}, which runs its code; "
                         "set trust_code: true in the card to allow it")
    folder = str(card.folder)
    sys.path.insert(0, folder)
    try:
        factory = getattr(importlib.import_module(module_name), attr, None)
    finally:
        sys.path.remove(folder)
    if not callable(factory):
        raise ModelError(f"{card.path}: arch {card.arch!r}: module {module_name!r} has no callable {attr!r}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise ModelError(f"{card.path}: arch {card.arch!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


READERS: dict[str, Callable[[ModelCard], nn.Module]] = {
    "torchscript": read_torchscript,
    "exported": read_exported,
    "onnx": read_onnx,
    "state_dict": read_state_dict,
    "run": read_run,
}
