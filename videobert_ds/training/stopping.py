"""A clean stop before the scheduler's kill: SIGUSR1 (SLURM's warning before the time limit) or SIGTERM
(preemption) sets a flag; at check steps the ranks agree on it, so every rank checkpoints and stops at the
same step."""

from __future__ import annotations

import signal
from typing import Any

import torch
import torch.distributed as dist

from videobert_ds.core.config import ScheduleConfig


class StopFlag:
    """Set by SIGUSR1 or SIGTERM; installs its handlers when constructed."""

    def __init__(self, sched: ScheduleConfig) -> None:
        self.sched = sched
        self.signal: int | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def should_check(self, step: int) -> bool:
        """Every `signal_check_every` steps, and at log steps (which sync the host anyway)."""
        return step % self.sched.log_every == 0 or step % self.sched.signal_check_every == 0

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce; call at check steps only)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
