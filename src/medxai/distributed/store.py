"""A chunked result store: safetensors shard files next to a JSON index, written atomically.

Layout of a store folder::

    index.json               format, fingerprint, n, shard_size, n_shards, config, complete
    shard-00000.safetensors  the results of samples [0, shard_size), metadata: format,
    shard-00001.safetensors  fingerprint, shard number, start, stop, ids (JSON) and more JSON
    ...

A shard file is the unit of work and of completion: it is written atomically
(``medxai._util.io``), so after a kill it is either complete or absent, and it carries the
store's fingerprint (a hash of everything that decides its content), so a rerun of the same
configuration recognises it and a different configuration is refused instead of mixed in.
``MapStore`` holds explanation maps (``medxai.distributed.explain``), ``ScoreStore`` per-sample
scores (``medxai.distributed.score``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from medxai._util.io import atomic_write_json, save_safetensors
from medxai.errors import ConfigError, DataError

__all__ = ["MAP_FORMAT", "SCORE_FORMAT", "MapStore", "ScoreStore", "ShardedStore", "fingerprint"]

MAP_FORMAT = "medxai.mapstore/1"
SCORE_FORMAT = "medxai.scorestore/1"
INDEX = "index.json"


def fingerprint(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class ShardedStore:
    """Shards ``[i * shard_size, min(n, (i + 1) * shard_size))`` of ``n`` samples in ``root``.

    Build with ``open`` (an existing store) or ``define`` (the store a configuration implies;
    ``prepare`` then creates or checks it on disk).
    """

    format = "medxai.store/1"

    def __init__(self, root: str | Path, *, n: int, shard_size: int, fingerprint: str,
                 config: Mapping[str, Any] | None = None) -> None:
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"a store needs at least one sample, got n={n!r}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
        self.root = Path(root)
        self.n, self.shard_size, self.fingerprint = n, shard_size, fingerprint
        self.config = dict(config or {})
        self.n_shards = -(-n // shard_size)

    # ------------------------------------------------------------------ geometry
    def shard_range(self, i: int) -> tuple[int, int]:
        """(start, stop) sample indices of shard ``i``."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} out of range 0..{self.n_shards - 1}")
        return i * self.shard_size, min(self.n, (i + 1) * self.shard_size)

    def shard_path(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.safetensors"

    # ------------------------------------------------------------------ index
    def _index(self, complete: bool = False) -> dict[str, Any]:
        return {"format": self.format, "fingerprint": self.fingerprint, "n": self.n, "shard_size": self.shard_size,
                "n_shards": self.n_shards, "complete": complete, "config": self.config}

    @classmethod
    def open(cls, root: str | Path) -> ShardedStore:
        """The store in ``root`` as its index describes it (DataError if there is none)."""
        root = Path(root)
        path = root / INDEX
        if not path.is_file():
            raise DataError(root, f"not a medxai store (no {INDEX})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(path, f"unreadable index ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != cls.format:
            got = data.get("format") if isinstance(data, dict) else None
            raise DataError(path, f"not a {cls.format} index (format {got!r})")
        try:
            store = cls(root, n=int(data["n"]), shard_size=int(data["shard_size"]),
                        fingerprint=str(data["fingerprint"]), config=data.get("config") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(path, f"malformed index ({exc})") from None
        if store.n_shards != int(data.get("n_shards", store.n_shards)):
            raise DataError(path, "n_shards does not match n and shard_size")
        return store

    def prepare(self, *, overwrite: bool = False) -> list[int]:
        """Create the folder and index, or check that an existing one holds this configuration;
        remove temporary files a killed writer left; return the missing shards. ``overwrite``
        deletes the shards of a different configuration instead of refusing them."""
        path = self.root / INDEX
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("format") != self.format or old.get("fingerprint") != self.fingerprint:
                if not overwrite:
                    what = old.get("config") or {}
                    raise ConfigError(f"{self.root} holds results of another configuration ({_short(what)}); "
                                      "choose another folder or pass overwrite (--overwrite) to replace them")
                self._remove_shards()
        elif self.root.exists() and any(self.root.glob("shard-*.safetensors")):
            if not overwrite:
                raise ConfigError(f"{self.root} holds shard files but no {INDEX}; choose another folder or overwrite")
            self._remove_shards()
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".shard-*.tmp"):
            tmp.unlink(missing_ok=True)
        missing = self.missing()
        atomic_write_json(path, self._index(complete=not missing))
        return missing

    def _remove_shards(self) -> None:
        if not self.root.is_dir():
            return
        for p in self.root.glob("shard-*.safetensors"):
            p.unlink()
        (self.root / INDEX).unlink(missing_ok=True)

    def mark(self) -> bool:
        """Rewrite the index with ``complete`` = no shard missing; returns it."""
        complete = not self.missing()
        atomic_write_json(self.root / INDEX, self._index(complete=complete))
        return complete

    # ------------------------------------------------------------------ shards
    def _header(self, i: int) -> dict[str, str] | None:
        from safetensors import SafetensorError, safe_open

        p = self.shard_path(i)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as fh:
                return dict(fh.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None

    def is_done(self, i: int) -> bool:
        """Shard ``i`` exists, is readable and belongs to this configuration."""
        meta = self._header(i)
        start, stop = self.shard_range(i)
        return (meta is not None and meta.get("format") == self.format and meta.get("fingerprint") == self.fingerprint
                and meta.get("shard") == str(i) and meta.get("start") == str(start) and meta.get("stop") == str(stop))

    def done(self) -> list[int]:
        return [i for i in range(self.n_shards) if self.is_done(i)]

    def missing(self) -> list[int]:
        return [i for i in range(self.n_shards) if not self.is_done(i)]

    def write(self, i: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
        """Write shard ``i`` atomically; ``meta`` values are stored as JSON strings."""
        start, stop = self.shard_range(i)
        md = {"format": self.format, "fingerprint": self.fingerprint, "shard": str(i), "start": str(start),
              "stop": str(stop)}
        for k, v in (meta or {}).items():
            md[k] = json.dumps(v, allow_nan=False)
        for k, t in tensors.items():
            if t.shape[0] != stop - start:
                raise ValueError(f"shard {i}: tensor {k!r} has {t.shape[0]} rows, want {stop - start}")
        return save_safetensors(self.shard_path(i), tensors, md)

    def read(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Shard ``i``: its tensors and its decoded JSON metadata (DataError if absent or foreign)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not self.is_done(i):
            raise DataError(self.shard_path(i), "missing, unreadable or of another configuration; rerun to complete "
                            "the store")
        raw = self._header(i) or {}
        try:
            tensors = load_file(str(self.shard_path(i)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise DataError(self.shard_path(i), f"unreadable shard ({exc})") from None
        meta: dict[str, Any] = {}
        for k, v in raw.items():
            if k in ("format", "fingerprint", "shard", "start", "stop"):
                continue
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError as exc:
                raise DataError(self.shard_path(i), f"metadata {k!r} is not JSON ({exc})") from None
        return tensors, meta

    def iter_shards(self) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, Any]]]:
        """(i, tensors, meta) shard after shard: one shard in memory at a time."""
        for i in range(self.n_shards):
            tensors, meta = self.read(i)
            yield i, tensors, meta

    def require_complete(self) -> None:
        """DataError naming how many shards are missing, if any."""
        missing = self.missing()
        if missing:
            raise DataError(self.root, f"{len(missing)} of {self.n_shards} shard(s) missing (first: {missing[0]}); "
                            "rerun the command that writes this store to complete it")

    def remove(self) -> None:
        """Delete the store folder."""
        shutil.rmtree(self.root, ignore_errors=True)


class MapStore(ShardedStore):
    """Explanation maps: per shard ``index`` (N_i,) int64 dataset indices, ``maps/RUN/METHOD``
    (N_i, 1, H, W) float16 or float32, ``targets/RUN`` (N_i,) int64, ``labels`` (N_i, ...) float32,
    ``masks`` (N_i, K, H, W) and ``shortcut_masks`` (N_i, H, W) uint8 when the data has them;
    metadata ``ids``. Volumes: (D, H, W) in place of (H, W). ``config`` (index) names the runs,
    methods, target rule, dtype and data (and, with a voxel budget, ``max_shard_voxels``, ``spatial``
    and ``explain_batch_size``)."""

    format = MAP_FORMAT

    @property
    def keys(self) -> list[str]:
        """``RUN/METHOD`` of every map."""
        return [f"{r}/{m}" for r in self.config.get("runs", {}) for m in self.config.get("methods", {})]


class ScoreStore(ShardedStore):
    """Per-sample scores: per shard ``RUN/METHOD/COLUMN`` (N_i,) float64; metadata ``ids`` and
    ``columns`` (each column's metric, category, higher_is_better, reference)."""

    format = SCORE_FORMAT


def _short(config: Mapping[str, Any]) -> str:
    parts = []
    for k in ("runs", "methods", "metrics", "dtype", "target", "data"):
        if k in config:
            v = config[k]
            v = ",".join(map(str, v)) if isinstance(v, (list, dict)) else v
            parts.append(f"{k}={v}")
    return "; ".join(parts) or "unknown"
