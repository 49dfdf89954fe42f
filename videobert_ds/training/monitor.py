"""What a person watches: TensorBoard scalars and images, a metrics.jsonl, throughput, data wait, MFU.

Only rank 0 writes. Scalars arrive already reduced across ranks (training/metrics.py reduces them once per
log interval, never inside a step), so this module does no communication of its own.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import psutil
import torch

from videobert_ds.core.atomic import write_text
from videobert_ds.training.timing import StepTimer, device_peak_flops

log = logging.getLogger(__name__)


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process(os.getpid()).memory_info().rss / 2**30


def drop_rows_after(metrics_file: Path, step: int) -> int:
    """Keep the rows of `metrics_file` with step <= `step` (rewritten atomically); -> rows dropped. A run that
    resumes from `step` logs the later steps again; a torn last line (a killed run) goes too."""
    if not metrics_file.is_file():
        return 0
    kept, dropped = [], 0
    for line in metrics_file.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            row_step = None
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        write_text(metrics_file, "".join(kept))
    return dropped


class Monitor:
    def __init__(self, run_dir: Path, rank: int, device: torch.device, world_size: int, start_step: int = 0) -> None:
        """`start_step`: the step training (re)starts from; rows logged past it by an earlier attempt are
        dropped from metrics.jsonl and hidden in TensorBoard (purge_step), so no step appears twice."""
        self.rank = rank
        self.device = device
        self.world_size = world_size
        self.peak, self.device_name = device_peak_flops(device)
        self.writer = None
        self.metrics_file = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = run_dir / "tb"
            self.writer = SummaryWriter(str(self.tb_dir), purge_step=start_step + 1 if start_step else None)
            dropped = drop_rows_after(run_dir / "metrics.jsonl", start_step)
            if dropped:
                log.info("metrics.jsonl: dropped %d rows past step %d (they are trained again)", dropped, start_step)
            self.metrics_file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 (open for the run)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.rank != 0:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.metrics_file.write(json.dumps({"step": step, **values}) + "\n")

    def throughput(self, timer: StepTimer) -> dict[str, float]:
        """Global samples/s and tokens/s (rank 0's count x world size: every rank runs the same steps on
        same-sized batches), data-wait share, memory, and per-device TFLOP/s and MFU."""
        if timer.total_s <= 0:
            return {}
        sps = timer.samples * self.world_size / timer.total_s
        out = {
            "perf/samples_per_s": sps,
            "perf/step_time_s": timer.total_s / max(timer.steps, 1),
            "perf/data_wait_frac": timer.data_s / timer.total_s,
            "perf/memory_gib": memory_gib(self.device),
        }
        if timer.tokens:
            out["perf/tokens_per_s"] = timer.tokens * self.world_size / timer.total_s
        if timer.flops:
            achieved = timer.flops / timer.total_s  # this device's model FLOP/s
            out["perf/tflops_per_device"] = achieved / 1e12
            if self.peak:
                out["perf/mfu"] = achieved / self.peak
        return out

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """uint8 HWC grids."""
        if self.rank != 0:
            return
        for key, img in images.items():
            self.writer.add_image(key, img, step, dataformats="HWC")

    def text(self, step: int, key: str, value: str) -> None:
        if self.rank == 0:
            self.writer.add_text(key, value, step)

    def close(self) -> None:
        if self.rank == 0:
            self.writer.close()
            self.metrics_file.close()
