"""What a person watches: TensorBoard scalars and images, a metrics.jsonl, throughput, data wait, MFU.

Only rank 0 writes. Scalars arrive already reduced across ranks (training/metrics.py reduces them once per
log interval, never inside a step), so this module does no communication of its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import psutil
import torch

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, from the vendors' data sheets
# (without sparsity). MFU = achieved model FLOP/s / this peak.
GPU_BF16_PEAK = [
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("A100", 312.0e12),
    ("L40S", 362.1e12),
    ("A10G", 70.0e12),
    ("V100", 125.0e12),
]


def device_peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, device name); peak is None on CPU or an unknown GPU (then no MFU is logged)."""
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for fragment, peak in GPU_BF16_PEAK:
        if fragment in name:
            return peak, name
    return None, name


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process(os.getpid()).memory_info().rss / 2**30


class StepTimer:
    """Wall time per step split into waiting-for-data and the rest, summed over a log window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.data_s = 0.0
        self.total_s = 0.0
        self.samples = 0
        self.tokens = 0
        self.flops = 0.0
        self.steps = 0
        self._mark = time.perf_counter()

    def data_ready(self, wait_started: float) -> None:
        self.data_s += time.perf_counter() - wait_started

    def step_done(self, samples: int, tokens: int = 0, flops: float = 0.0) -> None:
        now = time.perf_counter()
        self.total_s += now - self._mark
        self._mark = now
        self.samples += samples
        self.tokens += tokens
        self.flops += flops
        self.steps += 1

    def restart_clock(self) -> None:
        """Exclude time spent outside the step loop (validation, checkpoints) from throughput."""
        self._mark = time.perf_counter()


class Monitor:
    def __init__(self, run_dir: Path, rank: int, device: torch.device, world_size: int) -> None:
        self.rank = rank
        self.device = device
        self.world_size = world_size
        self.peak, self.device_name = device_peak_flops(device)
        self.writer = None
        self.metrics_file = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = run_dir / "tb"
            self.writer = SummaryWriter(str(self.tb_dir))
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
