"""The learning-rate schedule the stage config owns (the DeepSpeed JSON owns the peak lr and the optimizer)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from videobert_ds.core.config import ScheduleConfig


def lr_multiplier(step: int, warmup: int, total: int, decay: str, min_ratio: float) -> float:
    """Linear warm-up to the DeepSpeed optimizer's lr, then cosine/linear decay to min_ratio × lr."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(sched: ScheduleConfig) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """What `deepspeed.initialize(lr_scheduler=...)` takes: a factory DeepSpeed calls with its optimizer."""

    def multiplier(step: int) -> float:
        return lr_multiplier(step, sched.warmup_steps, sched.max_steps, sched.decay, sched.min_lr_ratio)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
