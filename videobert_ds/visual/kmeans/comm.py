"""The collectives the distributed k-means fit needs, over torch.distributed ranks.

Each rank passes only its own features. Every rank makes the same sequence of collective calls
whatever it holds (zero points at a node, or none at all), because every control decision is taken
from all-reduced or all-gathered values.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _Comm:
    """The collectives k-means needs; single-process no-ops when torch.distributed is not initialised."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.rank = dist.get_rank(group) if self.active else 0
        self.world = dist.get_world_size(group) if self.active else 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, group=self.group)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.active:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous(), group=self.group)
        return out
