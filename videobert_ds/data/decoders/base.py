"""What the clip loader asks of a decoder: batches of encoded clips in, batches of uint8 frames on the device out.

Two decoders keep this contract: DaliClipDecoder (dali.py; VP8/VP9/MJPEG on CPU, more codecs on a GPU) and
PyAVClipDecoder (pyav.py; any codec libavcodec reads, on the CPU). The loader picks one per device, codec and
frame size (loader.choose_decoder).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch

PAD_MODES = ("constant", "edge")


class EncodedBatch(NamedTuple):
    """One batch a decoder reads: encoded clips, a payload carried to its output unchanged, and per clip the
    first frame its output starts at (a temporal crop, data/crops.py); ``starts`` None = frame 0 for all."""

    clips: list[bytes]
    payload: Any
    starts: Sequence[int] | None = None


# What a decoder reads: EncodedBatch items, or plain (clips, payload) pairs (every clip from frame 0).
EncodedBatches = Iterator[EncodedBatch | tuple[list[bytes], Any]]


def encoded_batch(item: EncodedBatch | tuple[list[bytes], Any]) -> tuple[list[bytes], Any, list[int]]:
    """(clips, payload, start frame per clip) of one input item, with the starts checked."""
    batch = EncodedBatch(*item)
    starts = [0] * len(batch.clips) if batch.starts is None else [int(s) for s in batch.starts]
    if len(starts) != len(batch.clips) or any(s < 0 for s in starts):
        raise ValueError(f"need one start frame >= 0 per clip: {len(batch.clips)} clips, starts {starts}")
    return batch.clips, batch.payload, starts


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``. To a GPU it goes through page-locked memory, asynchronously: a copy from
    pageable memory is staged by the driver, runs slower and blocks the host until done. torch's caching host
    allocator keeps the pinned buffer alive until the copy has run."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class ClipDecoder(ABC):
    """Iterator of (frames uint8 (B,T,H,W,C) on ``device``, payload) for each EncodedBatch input.

    ``payload`` is carried alongside, unchanged (the loader's sample metadata). Each clip gives ``num_frames``
    frames from its start frame on (EncodedBatch.starts; 0 by default); frames past a clip's end are padded as
    ``pad_mode`` says ("constant" = zeros, "edge" = repeat the last frame). ``num_threads`` threads decode up to
    ``prefetch`` batches ahead of the one delivered, so a decoder may pull more inputs than it has handed out.
    """

    def __init__(
        self,
        batches: EncodedBatches,
        *,
        batch_size: int,
        num_frames: int,
        device: torch.device,
        num_threads: int = 2,
        prefetch: int = 2,
        pad_mode: str = "constant",
    ) -> None:
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be 'constant' or 'edge', got {pad_mode!r}")
        self.batch_size, self.num_frames, self.device = batch_size, num_frames, device
        self.num_threads, self.prefetch, self.pad_mode = num_threads, prefetch, pad_mode
        self._start(batches)

    @abstractmethod
    def _start(self, batches: EncodedBatches) -> None:
        """Set up decoding of ``batches`` (a pipeline, a thread pool) with the options the constructor stored."""

    def __iter__(self) -> ClipDecoder:
        return self

    @abstractmethod
    def __next__(self) -> tuple[torch.Tensor, Any]:
        """The next batch: (frames uint8 (B, T, H, W, C) on the device, its payload)."""

    @abstractmethod
    def close(self) -> None:
        """Stop decoding now (threads, pipeline); batches decoded ahead are dropped."""
