"""How big and how fast a model is: parameter counts (ZeRO-3 partitions included) and inference throughput."""

from __future__ import annotations

import time

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Full parameter count (tied weights once), also when ZeRO-3 holds only a partition locally."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


@torch.inference_mode()
def inference_clips_per_s(
    model: nn.Module, seq_len: int, batch: int, device: torch.device, windows: int = 5, window_seconds: float = 0.2
) -> float:
    """Encoder forward throughput in samples (one clip's sequence each) per second at `seq_len` tokens: the
    best of several timed windows after a warm-up batch (a shared host only ever slows a window down). The
    visual tokenizer, the same for teacher and student, is left out."""
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen).to(device)
    types = torch.zeros_like(ids)
    types[:, seq_len // 3 :] = 1
    mask = torch.ones_like(ids)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model(ids, types, mask)
    sync()
    best = 0.0
    for _ in range(windows):
        runs, started = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - started < window_seconds:
            model(ids, types, mask)
            runs += 1
        sync()
        best = max(best, runs * batch / (time.perf_counter() - started))
    return best
