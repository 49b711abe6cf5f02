"""The process group under torchrun: detect RANK / WORLD_SIZE / LOCAL_RANK, start gloo or nccl once,
and the few collectives medxai needs (sums, gathers, broadcasts of small Python objects).

Without torchrun's variables (or with WORLD_SIZE=1) nothing is started and every helper here is
the identity, so single-process code paths stay exactly as they are.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medxai.errors import ConfigError

__all__ = ["DistInfo", "all_finite", "barrier", "broadcast_object", "current", "env_info", "gather_objects",
           "session", "setup", "shutdown", "sum_floats"]

_OWNED = [False]  # whether medxai started the default process group (and so ends it)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (a process group is running)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, indexes and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def env_info() -> DistInfo:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if local < 0:
        raise ConfigError(f"LOCAL_RANK must be >= 0, got {local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    """The running process group's view (one process when none is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    world = dist.get_world_size()
    if world <= 1:
        return DistInfo(backend=str(dist.get_backend()))
    rank = dist.get_rank()
    return DistInfo(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank),
                    backend=str(dist.get_backend()))


def setup(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Start the default process group when torchrun's variables say WORLD_SIZE > 1 (idempotent).

    ``backend``: default ``gloo`` without CUDA, ``cpu:gloo,cuda:nccl`` with it (CPU tensors over
    gloo, GPU tensors over nccl). Each process is pinned to GPU ``LOCAL_RANK`` when CUDA is there.
    A group medxai starts is destroyed at interpreter exit.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    info = env_info()
    if info.world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ConfigError(f"WORLD_SIZE={info.world_size} but {var} is not set; launch with torchrun "
                              "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                              "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout_s))
    if not _OWNED[0]:
        atexit.register(shutdown)
    _OWNED[0] = True
    return current()


EXIT_BARRIER_S = 60.0  # how long a process waits at shutdown for the others before destroying the group


def shutdown() -> None:
    """Destroy the process group if medxai started it (a no-op otherwise).

    Every process first waits (at most ``EXIT_BARRIER_S``) until all reach this point: a process that
    destroyed its gloo group and exited while another still had the pair open aborted in the gloo threads
    at interpreter exit (``terminate called without an active exception``, about 1 launch in 3 here)."""
    if _OWNED[0] and dist.is_available() and dist.is_initialized():
        gc.collect()  # DDP wrappers left in reference cycles hold the group: free them while Python is alive
        try:
            dist.barrier(async_op=True).wait(timeout=timedelta(seconds=EXIT_BARRIER_S))
        except RuntimeError:  # a process that is gone or stuck: destroy ours anyway
            pass
        dist.destroy_process_group()
    _OWNED[0] = False


@contextmanager
def session(backend: str | None = None) -> Iterator[DistInfo]:
    """``setup()`` for a block; ends the group on exit only if this block started it."""
    started = not (dist.is_available() and dist.is_initialized())
    info = setup(backend)
    try:
        yield info
    finally:
        if started and info.enabled:
            shutdown()


def _device() -> torch.device:
    """Where small collective tensors live: the current GPU for a pure nccl group, else the CPU."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every process (a no-op for one process)."""
    if current().enabled:
        dist.barrier()


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sums over the processes (float64)."""
    if not current().enabled or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_finite(value: float) -> bool:
    """True when ``value`` is finite on every process (a collective: every process must call it)."""
    bad = 0.0 if math.isfinite(value) else 1.0
    return sum_floats([bad])[0] == 0.0


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
