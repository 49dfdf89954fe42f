"""Decode batches of encoded clips with a DALI pipeline: external_source -> decoders.video.

The reading side (which samples, in which order) stays in Python (see sampling.py) so the data
position is plain state; DALI only decodes. Batches arrive through ``fn.external_source``, whose
callback DALI calls in this thread, in order, ``prefetch`` batches ahead of what was delivered.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from videobert_ds.data.decoders.base import ClipDecoder, EncodedBatches

# What DALI's libavcodec-based CPU decoder reads; everything else needs the GPU ("mixed") decoder.
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | {"h264", "avc", "hevc", "h265", "av1", "mpeg4"}


def dali_can_decode(codec: str, device: torch.device) -> bool:
    """Whether DALI's video decoder for this torch device reads this codec."""
    return codec.lower() in (GPU_CODECS if device.type == "cuda" else CPU_CODECS)


class DaliClipDecoder(ClipDecoder):
    """A ClipDecoder running one DALI pipeline: ``fn.external_source`` feeds it, ``fn.decoders.video`` decodes
    (on the CPU, or "mixed" on a CUDA device) and DLPack hands the frames to torch without a copy."""

    def _start(self, batches: EncodedBatches) -> None:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        device = self.device
        # The feeder holds no reference back to this object, so dropping it frees the pipeline at once.
        self._feeder = _Feeder(batches)
        on_gpu = device.type == "cuda"
        device_id = (device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else None
        # exec_dynamic: outputs stay valid while referenced, so DLPack hands them to torch without a copy.
        self._pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=device_id,
            prefetch_queue_depth=self.prefetch,
            exec_dynamic=True,
        )
        with self._pipe:
            encoded, tag = fn.external_source(
                source=self._feeder, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64]
            )
            video = fn.decoders.video(
                encoded, device="mixed" if on_gpu else "cpu", sequence_length=self.num_frames, pad_mode=self.pad_mode
            )
            self._pipe.set_outputs(video, tag)
        self._pipe.build()

    def __next__(self) -> tuple[torch.Tensor, Any]:
        video, tag = self._pipe.run()
        n, payload = self._feeder.payloads.popleft()
        if int(np.asarray(tag.as_tensor())[0]) != n:
            raise RuntimeError(f"DALI returned batch {int(np.asarray(tag.as_tensor())[0])}, expected {n}")
        if not video.is_dense_tensor():
            shapes = sorted({tuple(video[i].shape()) for i in range(len(video))})
            raise RuntimeError(f"clips of one batch decode to different shapes {shapes}; shards must share one size")
        with self.device:
            frames = torch.from_dlpack(video.as_tensor())
        return frames, payload

    def close(self) -> None:
        """Stop the pipeline's threads now."""
        self._pipe = None


class _Feeder:
    """The external_source callback: the next batch of encoded clips, remembering its payload."""

    def __init__(self, batches: EncodedBatches) -> None:
        self.batches = batches
        self.payloads: deque[tuple[int, Any]] = deque()
        self.fed = 0

    def __call__(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        clips, payload = next(self.batches)
        n = self.fed
        self.fed += 1
        self.payloads.append((n, payload))
        # Each sample carries its batch number through the pipeline to check outputs match payloads.
        tags = [np.array(n, dtype=np.int64)] * len(clips)
        return [np.frombuffer(c, dtype=np.uint8) for c in clips], tags
