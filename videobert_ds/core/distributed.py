"""Evaluation work split evenly across ranks, with every rank making the same number of calls (ZeRO-3-safe)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

R = TypeVar("R")


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
