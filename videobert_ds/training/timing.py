"""Step timing and the device's peak FLOP/s: what throughput and MFU are computed from.

CUDA runs kernels asynchronously: the host clock read right after a step only says when the host finished
queueing it. StepTimer therefore synchronises the device right before it reads the clock at a log step
(between log steps no sync is needed: the window's time is the difference of two synced readings).
"""

from __future__ import annotations

import logging
import re
import time

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by exact device name as torch.cuda.get_device_name
# reports it, normalised (normalise_gpu_name). From NVIDIA's data sheets, whose "with sparsity" figures are
# twice these. MFU = achieved model FLOP/s / this peak. A name not listed gets no MFU (a substring match gave
# an H100 NVL the SXM peak).
GPU_BF16_PEAK: dict[str, float] = {
    # Hopper
    "h100 80gb hbm3": 989.5e12,  # H100 SXM5
    "h100 sxm5 80gb": 989.5e12,
    "h100 nvl": 835.5e12,  # H100 NVL (94 GB), 1,671 TFLOPS with sparsity
    "h100 pcie": 756.5e12,  # 1,513 with sparsity
    "h200": 989.5e12,  # H200 SXM
    "h200 nvl": 835.5e12,
    "gh200 480gb": 989.5e12,  # Grace Hopper: the H100 SXM's tensor cores
    "gh200 144g hbm3e": 989.5e12,
    # Blackwell
    "b200": 2.25e15,  # HGX B200: 36 PFLOPS with sparsity over 8 GPUs
    "gb200": 2.5e15,  # GB200 NVL72: 360 PFLOPS with sparsity over 72 GPUs
    # Ampere
    "a100 sxm4 40gb": 312e12,
    "a100 sxm4 80gb": 312e12,
    "a100 sxm 80gb": 312e12,
    "a100 pcie 40gb": 312e12,
    "a100 80gb pcie": 312e12,
    "a10": 125e12,
    "a10g": 70e12,  # AWS's A10G: no NVIDIA data sheet; the commonly quoted figure (lower clocks than the A10)
    # Ada
    "l40s": 362.05e12,
    "l40": 181.05e12,
    "l4": 121e12,
    # Volta has no bf16 tensor cores (bf16 matmuls run without them): these are its fp16 tensor peaks.
    "v100 sxm2 16gb": 125e12,
    "v100 sxm2 32gb": 125e12,
    "v100 sxm3 32gb": 125e12,
    "v100 pcie 16gb": 112e12,
    "v100 pcie 32gb": 112e12,
    "v100s pcie 32gb": 130e12,
}
NO_BF16_TENSOR_CORES = frozenset(name for name in GPU_BF16_PEAK if name.startswith("v100"))

_LOGGED: set[str] = set()


def normalise_gpu_name(name: str) -> str:
    """A device name compared case- and punctuation-blind, without the vendor prefix: "NVIDIA A100-SXM4-80GB"
    -> "a100 sxm4 80gb", "Tesla V100-SXM2-16GB" -> "v100 sxm2 16gb"."""
    words = re.sub(r"[\s_\-]+", " ", name.strip().lower()).split()
    while words and words[0] in ("nvidia", "tesla"):
        words = words[1:]
    return " ".join(words)


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called ``name`` (exact, normalised), or None when not listed."""
    return GPU_BF16_PEAK.get(normalise_gpu_name(name))


def device_peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, device name); peak is None on CPU or an unknown GPU (then no MFU is logged). Rank 0
    logs once which peak MFU is measured against."""
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    peak = gpu_peak_flops(name)
    if name not in _LOGGED and (not dist.is_initialized() or dist.get_rank() == 0):
        _LOGGED.add(name)
        log.info("%s", describe_peak(name, peak))
    return peak, name


def describe_peak(name: str, peak: float | None) -> str:
    """The log line saying which peak MFU uses for the GPU ``name``."""
    if peak is None:
        return f"no MFU: {name!r} is not in the peak table (training/timing.py GPU_BF16_PEAK)"
    fp16_only = normalise_gpu_name(name) in NO_BF16_TENSOR_CORES
    what = "fp16 tensor peak (no bf16 tensor cores)" if fp16_only else "dense bf16"
    return f"MFU against {peak / 1e12:.1f} TFLOP/s ({what}) for {name}"


class StepTimer:
    """Wall time per step split into waiting-for-data and the rest, summed over a log window.

    ``device``: the training device; on CUDA, ``step_done(..., sync=True)`` (the last micro-step before a log)
    synchronises it before reading the clock, so the window's time covers the kernels it queued."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
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

    def step_done(self, samples: int, tokens: int = 0, flops: float = 0.0, *, sync: bool = False) -> None:
        """Count one (micro-)step. ``sync``: this step ends a log window; wait for the device first."""
        if sync and self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
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
