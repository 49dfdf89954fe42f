"""Step timing syncs the device only at log steps; the peak table matches exact GPU names (no CUDA needed)."""

from __future__ import annotations

import logging

import pytest
import torch

from videobert_ds.training import timing
from videobert_ds.training.timing import (
    GPU_BF16_PEAK,
    StepTimer,
    describe_peak,
    device_peak_flops,
    gpu_peak_flops,
    normalise_gpu_name,
)

CUDA = torch.device("cuda", 0)


@pytest.fixture
def events(monkeypatch) -> list:
    """What the timer does, in order: ("sync", device) for torch.cuda.synchronize, "clock" for each clock read."""
    seen: list = []
    real_clock = timing.time.perf_counter

    def clock() -> float:
        seen.append("clock")
        return real_clock()

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(("sync", device)))
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    return seen


def test_timer_syncs_the_gpu_right_before_the_clock_at_log_steps_only(events):
    timer = StepTimer(CUDA)
    events.clear()
    for _ in range(3):
        timer.step_done(2, tokens=10, flops=1.0)
    assert ("sync", CUDA) not in events and events == ["clock"] * 3
    events.clear()
    timer.step_done(2, tokens=10, flops=1.0, sync=True)  # the step that ends a log window
    assert events == [("sync", CUDA), "clock"]
    assert (timer.steps, timer.samples, timer.tokens) == (4, 8, 40)
    events.clear()
    timer.restart_clock()
    timer.data_ready(0.0)
    assert ("sync", CUDA) not in events


def test_timer_never_syncs_off_cuda(events):
    for device in (torch.device("cpu"), None):
        timer = StepTimer(device)
        timer.step_done(1, sync=True)
    assert all(e == "clock" for e in events)


# torch.cuda.get_device_name's strings -> dense bf16 peak.
NAMES = [
    ("NVIDIA H100 80GB HBM3", 989.5e12),  # SXM
    ("NVIDIA H100 NVL", 835.5e12),  # not the SXM peak
    ("NVIDIA H100 PCIe", 756.5e12),
    ("NVIDIA H200", 989.5e12),
    ("NVIDIA H200 NVL", 835.5e12),
    ("NVIDIA GH200 480GB", 989.5e12),
    ("NVIDIA B200", 2.25e15),
    ("NVIDIA GB200", 2.5e15),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L40S", 362.05e12),
    ("NVIDIA L40", 181.05e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12),
    ("Tesla V100-SXM2-32GB", 125e12),
    ("Tesla V100-PCIE-16GB", 112e12),
    # Unknown: no MFU rather than a neighbour's peak.
    ("NVIDIA H100", None),
    ("NVIDIA H20", None),
    ("NVIDIA B300", None),
    ("NVIDIA GeForce RTX 4090", None),
    ("NVIDIA A100X", None),
]


@pytest.mark.parametrize(("name", "peak"), NAMES)
def test_peak_table_matches_exact_names(name, peak):
    assert gpu_peak_flops(name) == peak


def test_peak_table_names_are_normalised_and_peaks_plausible():
    assert normalise_gpu_name("  NVIDIA  A100-SXM4-80GB ") == "a100 sxm4 80gb"
    assert normalise_gpu_name("Tesla V100S-PCIE-32GB") == "v100s pcie 32gb"
    for name, peak in GPU_BF16_PEAK.items():
        assert normalise_gpu_name(name) == name
        assert 50e12 <= peak <= 3e15


def test_peak_is_logged_once_and_says_which(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVL")
    timing._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="videobert_ds.training.timing"):
        assert device_peak_flops(CUDA) == (835.5e12, "NVIDIA H100 NVL")
        assert device_peak_flops(CUDA) == (835.5e12, "NVIDIA H100 NVL")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["MFU against 835.5 TFLOP/s (dense bf16) for NVIDIA H100 NVL"]
    assert device_peak_flops(torch.device("cpu")) == (None, "cpu")
    assert describe_peak("NVIDIA H20", None).startswith("no MFU: 'NVIDIA H20' is not in the peak table")
    assert "no bf16 tensor cores" in describe_peak("Tesla V100-SXM2-16GB", 125e12)
