"""What a prepare run is asked to do: how clips are cut and stored, and the error for bad arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass

from videobert_ds.data.video_io import CODECS

PROG = "videobert-prepare"  # the name in progress lines and error messages


class PrepareError(Exception):
    """A problem with the run's arguments or output directory (not with an input video)."""


@dataclass(frozen=True)
class PrepareOptions:
    """How clips are cut and stored; validated on construction."""

    codec: str = "vp9"
    fps: float = 10.0
    size: int = 128  # the least frame size NVDEC decodes VP9 (and AV1) at: GPUs decode the default corpus
    samples_per_shard: int = 256
    window: float = 4.0
    max_clip_seconds: float = 8.0
    min_clip_seconds: float = 0.5
    decode_threads: int = 0
    # Wall-clock seconds one video may take (decode + encode + verify) before it is skipped as video_timeout;
    # 0: no limit. The video runs in a worker process so the limit holds even inside a stuck decoder call.
    video_timeout: float = 600.0

    def __post_init__(self) -> None:
        for name in ("fps", "window", "max_clip_seconds", "min_clip_seconds", "video_timeout"):
            # 10 and 10.0 are one setting: store floats, so manifest.json and report.json read the same
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.codec not in CODECS:
            raise PrepareError(f"unknown codec {self.codec!r} (choose from {', '.join(CODECS)})")
        for name in ("fps", "window", "max_clip_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise PrepareError(f"{name} must be a positive number, got {v!r}")
        if not (math.isfinite(self.min_clip_seconds) and 0 <= self.min_clip_seconds <= self.max_clip_seconds):
            raise PrepareError(f"min_clip_seconds must be in [0, max_clip_seconds], got {self.min_clip_seconds!r}")
        if not isinstance(self.size, int) or self.size < 8 or self.size % 2:
            raise PrepareError(f"size must be an even integer >= 8 (yuv420p), got {self.size!r}")
        if not isinstance(self.samples_per_shard, int) or self.samples_per_shard < 1:
            raise PrepareError(f"samples_per_shard must be an integer >= 1, got {self.samples_per_shard!r}")
        if not (math.isfinite(self.video_timeout) and self.video_timeout >= 0):
            raise PrepareError(f"video_timeout must be seconds >= 0 (0: no limit), got {self.video_timeout!r}")
        if not isinstance(self.decode_threads, int) or self.decode_threads < 0:
            raise PrepareError(f"decode_threads must be an integer >= 0, got {self.decode_threads!r}")
