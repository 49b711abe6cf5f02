"""What ``medxai.train.fit`` needs to train under torchrun (DistributedDataParallel).

- ``ShardedSampler``: a ``DistributedSampler`` whose epoch order is the single-process order
  (``torch.randperm`` of the loop's generator, seeded from (seed, epoch)); rank r takes every
  world-th index from position r, so the union of one step's per-rank batches is the batch of a
  single process with ``world_size`` times the batch size.
- ``wrap``: DDP around the model (SyncBatchNorm on GPUs; on CPU, where PyTorch has none, the
  BatchNorm running statistics are averaged across processes at every epoch end).
- ``sum_epoch`` / ``forward_all`` / ``from_main``: training sums all-reduced, validation logits
  gathered in dataset order, the epoch record taken from rank 0, so every rank decides alike.
- ``gather_rng`` / ``restore_rank_rng``: each rank's RNG state goes into last.safetensors, so a
  distributed ``resume`` continues every rank's random stream.

Every function is the identity (or plain single-process code) when ``info.enabled`` is False.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from medxai._util.dist import DistInfo, all_finite, broadcast_object, gather_objects, setup, sum_floats
from medxai._util.seed import derive_seed
from medxai.errors import ConfigError

__all__ = ["ShardedSampler", "all_finite", "average_buffers", "device_for", "forward_all", "from_main", "gather_rng",
           "rank_seed", "restore_rank_rng", "setup", "shard_indices", "shard_of", "sum_epoch", "wrap"]


class ShardedSampler(DistributedSampler):
    """The rank's share of one epoch's order. ``generator`` (the loop's, reseeded every epoch from
    (seed, epoch)) draws ``torch.randperm(n)`` exactly as ``RandomSampler`` does, or, with
    ``weights``, ``torch.multinomial(weights, n, replacement=True)`` as ``WeightedRandomSampler``
    does. The order is padded by repeating its head to a multiple of the world size (every rank
    gets the same number of samples, hence of steps). Without a generator the order is seeded
    from ``derive_seed(seed, "train-order", epoch)`` (``set_epoch``)."""

    def __init__(self, dataset: Dataset, info: DistInfo, *, generator: torch.Generator | None = None,
                 weights: torch.Tensor | None = None, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.generator = generator
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self):
        n = len(self.dataset)  # type: ignore[arg-type]
        g = self.generator
        if g is None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "train-order", self.epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, True, generator=g).tolist()
        else:
            order = torch.randperm(n, generator=g).tolist()
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)`` (no padding)."""
    return list(range(info.rank, n, info.world_size))


def shard_of(data: Dataset | None, info: DistInfo) -> Dataset | None:
    """The rank's strided share of ``data`` (``data`` itself for one process)."""
    if data is None or not info.enabled:
        return data
    n = len(data)  # type: ignore[arg-type]
    if n < info.world_size:
        raise ConfigError(f"the validation set has {n} sample(s), fewer than the {info.world_size} processes")
    return Subset(data, shard_indices(n, info))


def device_for(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if info.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def rank_seed(seed: int, info: DistInfo) -> int:
    """The seed of a rank's RNGs: ``seed`` on rank 0 (and for one process), derived on the others,
    so random starts of adversarial examples differ between shards."""
    return seed if info.rank == 0 else derive_seed(seed, "rank", info.rank)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` (rank 0's weights are broadcast to every rank); BatchNorm
    becomes SyncBatchNorm on GPUs. Buffers are not broadcast at each forward (``average_buffers``
    runs at epoch ends), so attacks may run any number of forwards per step."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    import inspect

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 names it forward_sync_buffers (buffers are still synced once, at construction)
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
           else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=ids, **{key: False})


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Make every rank's buffers equal: floating buffers (BatchNorm running statistics) averaged,
    the others (batch counters) taken from rank 0."""
    if not info.enabled:
        return
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(info.world_size)
            else:
                dist.broadcast(buf, src=0)


def sum_epoch(info: DistInfo, tot_loss: float, tot_n: int, correct: int, counted: int,
              extra: Mapping[str, float]) -> tuple[float, int, int, int, dict[str, float]]:
    """The epoch's training sums over all ranks (loss x n, n, correct, counted, extra sums)."""
    if not info.enabled:
        return tot_loss, tot_n, correct, counted, dict(extra)
    keys = sorted(extra)
    s = sum_floats([tot_loss, float(tot_n), float(correct), float(counted), *(float(extra[k]) for k in keys)])
    return s[0], round(s[1]), round(s[2]), round(s[3]), dict(zip(keys, s[4:], strict=True))


def forward_all(model: nn.Module, loader: Any, info: DistInfo, n: int, **kw: Any) -> tuple[list[str], torch.Tensor,
                                                                                            torch.Tensor]:
    """``medxai.evaluate.predict.forward_all`` over the rank's shard, gathered back into dataset
    order on every rank: (ids, labels, logits) of all ``n`` samples."""
    from medxai.evaluate.predict import forward_all as _forward_all

    if not info.enabled:
        return _forward_all(model, loader, **kw)
    ids, y, logits = _forward_all(model, loader, **kw)
    parts = gather_objects((ids, y.cpu(), logits.cpu()))
    all_ids: list[Any] = [None] * n
    ys = torch.empty((n, *y.shape[1:]), dtype=y.dtype)
    outs = torch.empty((n, *logits.shape[1:]), dtype=logits.dtype)
    for r, (pid, py, pl) in enumerate(parts):
        where = shard_indices(n, DistInfo(rank=r, world_size=info.world_size))
        ys[where], outs[where] = py, pl
        for k, i in zip(where, pid, strict=True):
            all_ids[k] = i
    return all_ids, ys, outs


def from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (the epoch record: one decision for best, stopping, plateau)."""
    return broadcast_object(obj) if info.enabled else obj


def gather_rng(state: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's RNG state (for last.safetensors), or None for one process."""
    return gather_objects(state) if info.enabled else None


def restore_rank_rng(saved: Any, info: DistInfo, set_state: Callable[[Any], None], seed: int, epoch: int) -> None:
    """Restore this rank's RNG state from a checkpoint's per-rank list; a checkpoint of another
    world size (or of one process) reseeds rank r from (seed, "resume", epoch, r) instead."""
    if not info.enabled:
        return
    if isinstance(saved, list) and len(saved) == info.world_size:
        set_state(saved[info.rank])
        return
    from medxai._util.seed import seed_everything

    seed_everything(derive_seed(seed, "resume", epoch, info.rank))
