"""Training curves: per-micro-step scalar outputs summed on the device, turned into means across steps and
ranks by one all-reduce every `schedule.log_every` steps (and at the last step), then written by the Monitor
(TensorBoard, metrics.jsonl) and as rank 0's log line. No host sync happens between log steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from videobert_ds.core.config import ScheduleConfig
from videobert_ds.core.distributed import DistEnv
from videobert_ds.training.monitor import Monitor, StepTimer

log = logging.getLogger(__name__)


def add_scalars(sums: dict[str, torch.Tensor], out: dict[str, Any]) -> None:
    """Add each 0-dim tensor of a module's output dict to `sums` (on the device, detached)."""
    for k, v in out.items():
        if torch.is_tensor(v) and v.dim() == 0:
            sums[k] = sums.get(k, 0.0) + v.detach().float()


def reduce_means(sums: dict[str, torch.Tensor], count: int, prefix: str) -> dict[str, float]:
    """Mean of each summed term over `count` steps and all ranks: one all-reduce, one host sync."""
    if not sums:
        return {}
    keys = sorted(sums)
    stacked = torch.stack([sums[k] for k in keys]) / max(count, 1)
    dist.all_reduce(stacked)
    values = (stacked / dist.get_world_size()).tolist()
    return {f"{prefix}{k}": v for k, v in zip(keys, values, strict=True)}


def reduce_counts(counts: dict[str, int], device: torch.device) -> dict[str, float]:
    """Counts summed over the ranks (one all-reduce) as `data/<name>` scalars, plus `data/skipped_share`: the skipped
    samples' share of those read."""
    keys = sorted(counts)
    summed = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    out = {f"data/{k}": v for k, v in zip(keys, summed.tolist(), strict=True)}
    skipped = sum(v for k, v in out.items() if k.startswith("data/skipped_"))
    out["data/skipped_share"] = skipped / max(out.get("data/seen", 0.0), 1.0)
    return out


class MetricsLogger:
    """Decides when the training curves are written and writes them; owns the run's Monitor."""

    def __init__(self, run_dir: Path, sched: ScheduleConfig, env: DistEnv, start_step: int = 0) -> None:
        self.sched = sched
        self.rank = env.rank
        self.monitor = Monitor(run_dir, env.rank, env.device, env.world_size, start_step)
        self.device = env.device
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._data: dict[str, int] | None = None  # the loader's samples read / skipped (data.on_error: skip)

    def record(self, out: dict[str, Any]) -> None:
        """One micro-step's outputs (every micro-step counts, accumulation steps included)."""
        add_scalars(self._sums, out)
        self._count += 1

    def record_data(self, counts: dict[str, int] | None) -> None:
        """The loader's data counts as of the latest batch (ClipBatch.data_counts; None with on_error "raise", the
        same on every rank, so the ranks agree on whether log steps reduce them)."""
        if counts is not None:
            self._data = counts

    def should_log(self, step: int) -> bool:
        return step % self.sched.log_every == 0 or step == self.sched.max_steps

    def log(self, step: int, engine: Any, timer: StepTimer) -> dict[str, float]:
        """Write the window's means, lr, grad norm and throughput; then start a new window."""
        scalars = reduce_means(self._sums, self._count, prefix="train/")
        scalars["train/lr"] = engine.get_lr()[0]
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        scalars.update(self.monitor.throughput(timer))
        if self._data is not None:
            scalars.update(reduce_counts(self._data, self.device))
        self.monitor.scalars(step, scalars)
        if self.rank == 0:
            log.info(
                "step %d/%d  loss %.4f  %.1f samples/s",
                step,
                self.sched.max_steps,
                scalars["train/loss"],
                scalars.get("perf/samples_per_s", 0.0),
            )
        self._sums, self._count = {}, 0
        timer.reset()
        return scalars

    def close(self) -> None:
        self.monitor.close()
