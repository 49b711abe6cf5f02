"""Beyond one process: torchrun / DistributedDataParallel training and dataset-scale explanations
and scores in a chunked, resumable store.

- ``setup()`` / ``current()`` / ``session()``: the process group torchrun describes (gloo on CPU,
  nccl on GPU); one process when RANK / WORLD_SIZE are not set. ``medxai.train.fit`` calls
  ``setup()`` itself, so ``torchrun --nproc_per_node=N --no-python medxai train ...`` trains
  with DDP (``medxai.train.ddp``).
- ``explain_dataset(models, dataset, methods, store)``: every rank explains its share of the
  store's shards (``shard_size`` images each) and writes them atomically as safetensors files next
  to a JSON index (``MapStore``); a rerun computes only the shards that are missing.
- ``score_store(store, metrics, ...)``: scores shard by shard (metrics by registry name), again
  resumable and sharded over ranks, then one rank writes scores.csv and summary.json. Peak
  memory is bounded by the shard size, not the dataset size.

The process-group helpers live in ``medxai._util.dist`` (training uses them too); the store and
scoring functions are imported lazily, on first use.
"""

from __future__ import annotations

from typing import Any

from medxai._util.dist import (
    DistInfo,
    barrier,
    broadcast_object,
    current,
    env_info,
    gather_objects,
    session,
    setup,
    shutdown,
    sum_floats,
)

_LAZY = {
    "MapStore": "medxai.distributed.store",
    "ScoreStore": "medxai.distributed.store",
    "StoreRun": "medxai.distributed.explain",
    "explain_dataset": "medxai.distributed.explain",
    "score_store": "medxai.distributed.score",
}

__all__ = ["DistInfo", "MapStore", "ScoreStore", "StoreRun", "barrier", "broadcast_object", "current", "env_info",
           "explain_dataset", "gather_objects", "score_store", "session", "setup", "shutdown", "sum_floats"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medxai.distributed' has no attribute {name!r}")
