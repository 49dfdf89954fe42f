"""Temporal crops: which ``num_frames`` consecutive frames of a longer clip a sample gives.

A shard clip spans its whole cue (up to ``max_clip_seconds`` x fps frames) while a model reads ``num_frames``;
a crop picks the first frame. Training draws it at random, anew each epoch ("random"); validation and
evaluation take the middle ("center"); "start" takes the first frames (the behaviour before crops existed).

The first frame is a pure function of (mode, seed, epoch, sample key, clip length, num_frames): no state, so a
resumed run replays the same crops, any rank reading a sample that epoch crops it alike, and every decoder
backend (DALI CPU or GPU, PyAV) gives the same frames for it. A clip no longer than ``num_frames`` starts at
frame 0 and is padded as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TEMPORAL_CROPS = ("random", "center", "start")
_CROP_STREAM = 0x63726F70  # "crop": keeps these draws apart from other SeedSequences over (seed, epoch, ...)


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a sample key (Python's hash() of a str changes from process to process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def crop_start(mode: str, length: int, num_frames: int, *, seed: int = 0, epoch: int = 0, key: str = "") -> int:
    """The first of ``num_frames`` frames to take from a clip of ``length`` frames (0 when it is not longer)."""
    if mode not in TEMPORAL_CROPS:
        raise ValueError(f"temporal crop must be one of {', '.join(TEMPORAL_CROPS)}; got {mode!r}")
    span = int(length) - int(num_frames)  # the last possible start
    if span <= 0 or mode == "start":
        return 0
    if mode == "center":
        return span // 2
    words = np.random.SeedSequence([_CROP_STREAM, int(seed) % 2**64, int(epoch), key_hash(key)])
    return int(words.generate_state(1, dtype=np.uint64)[0] % np.uint64(span + 1))


def crop_starts(
    mode: str, metas: Sequence[Mapping[str, Any]], num_frames: int, *, seed: int = 0, epoch: int = 0
) -> list[int]:
    """crop_start for each sample of a batch, from its json (``num_frames``: the clip's length) and ``__key__``."""
    return [
        crop_start(mode, int(m["num_frames"]), num_frames, seed=seed, epoch=epoch, key=str(m["__key__"])) for m in metas
    ]
