"""The process group: joining it (`init_distributed`), who this rank is, and work split evenly across ranks
with every rank making the same number of calls (ZeRO-3-safe)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

R = TypeVar("R")


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def skip_cpu_shm_allreduce() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op at process-group set-up
    (a minute of g++, and a py-cpuinfo probe that can spin forever in some VMs) and maps a 64 MiB
    /dev/shm buffer per rank that it never unlinks: every run leaks RAM until the host runs dry. Training
    does not use it (ZeRO's collectives go through gloo; it serves inference all-reduce only), so mark the
    op incompatible in DeepSpeed's op table, which DeepSpeed caches and consults before building it."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


DEFAULT_TIMEOUT_MINUTES = 60.0

# Where launchers other than torchrun/deepspeed say which rank of its node a process is (read before the
# process group exists: DeepSpeed's MPI discovery sets LOCAL_RANK only inside init_distributed).
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")


def local_rank_from_env() -> int:
    for var in LOCAL_RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def init_distributed(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistEnv:
    """Join the process group (env:// from the launcher or SLURM mapping, or MPI discovery).

    On CUDA the rank's device is set first: NCCL binds a communicator to the current device, and a group
    created before set_device starts every rank of a node on GPU 0. `timeout_minutes` bounds every
    collective (DeepSpeed's default is 10 minutes; a rank that works alone while the others wait in a
    barrier, e.g. on a large corpus, needs more)."""
    # DeepSpeed is imported here, not at the top: the rank/sharding helpers below serve code that never joins.
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if timeout_minutes <= 0:
        raise ValueError(f"process-group timeout must be > 0 minutes, got {timeout_minutes}")
    skip_cpu_shm_allreduce()
    accel = get_accelerator()
    local_rank = local_rank_from_env()
    if accel.device_name() == "cuda":
        accel.set_device(local_rank)
    deepspeed.init_distributed(auto_mpi_discovery=True, timeout=timedelta(minutes=timeout_minutes))
    if int(os.environ.get("LOCAL_RANK", local_rank)) != local_rank:  # MPI discovery knew better
        local_rank = int(os.environ["LOCAL_RANK"])
        if accel.device_name() == "cuda":
            accel.set_device(local_rank)
    device = torch.device("cuda", local_rank) if accel.device_name() == "cuda" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj: Any) -> list[Any]:
    rank, world = rank_world()
    if world == 1:
        return [obj]
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


def sharded(n: int, batch_size: int, fn: Callable[[list[int]], list[R]]) -> tuple[list[R], float]:
    """fn over indices 0..n-1 in batches, ranks taking contiguous blocks; -> (all results in index order on
    every rank, the slowest rank's seconds inside fn). Every rank calls fn the same number of times (a rank
    with nothing left repeats index 0 and drops the result), so forward calls stay matched under ZeRO-3."""
    rank, world = rank_world()
    if n == 0:
        return [], 0.0
    per_rank = math.ceil(n / world)
    mine = list(range(rank * per_rank, min(n, (rank + 1) * per_rank)))
    results: list[R] = []
    seconds = 0.0
    for b in range(math.ceil(per_rank / batch_size)):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        start = time.perf_counter()
        out = fn(idx or [0])
        seconds += time.perf_counter() - start
        results += out[: len(idx)]
    parts = all_gather((results, seconds))
    return [r for part, _ in parts for r in part], max(s for _, s in parts)
