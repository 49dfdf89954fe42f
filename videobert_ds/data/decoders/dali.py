"""Decode batches of encoded clips with a DALI pipeline: external_source -> decoders.video.

The reading side (which samples, in which order) stays in Python (see sampling.py) so the data
position is plain state; DALI only decodes. Batches arrive through ``fn.external_source``, whose
callback DALI calls in this thread, in order, ``prefetch`` batches ahead of what was delivered.

DALI decodes on the GPU ("mixed": NVDEC) only where NVDEC reads the codec at the clips' size (nvdec.py);
smaller VP8/VP9 clips decode on DALI's CPU decoder and the frames are copied to the device.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from videobert_ds.data.decoders.base import ClipDecoder, EncodedBatches, encoded_batch, to_device
from videobert_ds.data.decoders.nvdec import gpu_decodable

# What DALI's libavcodec-based CPU decoder reads; everything else needs the GPU ("mixed") decoder.
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | {"h264", "avc", "hevc", "h265", "av1", "mpeg4"}
DALI_DEVICES = ("mixed", "cpu")


def dali_decode_device(
    codec: str, device: torch.device, size: tuple[int, int] | None = None, *, gpu: bool = True
) -> str | None:
    """Where DALI decodes ``codec`` clips of ``size`` (width, height) for this torch device: "mixed" (NVDEC) on a
    CUDA device when NVDEC reads the codec at that size (an unknown size is left to the start-up probe),
    "cpu" where DALI's CPU decoder reads the codec (on a CUDA device the frames are then copied there), None
    where DALI cannot decode it. ``gpu=False`` rules out "mixed"."""
    name = codec.lower()
    if gpu and device.type == "cuda" and name in GPU_CODECS and (size is None or gpu_decodable(name, *size)):
        return "mixed"
    return "cpu" if name in CPU_CODECS else None


def explain_gpu_decode_error(text: str) -> str:
    """One line saying what to do about DALI's error text from decoding on the GPU ("mixed")."""
    low = text.lower()
    if "nvcuvid" in low or "cuda_error_no_device" in low:
        # torch sees the GPU, so a missing device here means the driver's video library is not mounted.
        return (
            "DALI's GPU video decoder cannot use NVDEC: the driver's video library (libnvcuvid) is not loadable "
            "here. In a container, NVIDIA_DRIVER_CAPABILITIES must include `video` (e.g. compute,utility,video; "
            "docker --gpus 'all,capabilities=compute,utility,video'); or decode on the CPU with data.backend=pyav"
        )
    if "too small in at least one dimension" in low:
        return (
            "DALI's GPU video decoder refuses these clips: they are below NVDEC's minimum frame size for their "
            "codec (VP9/AV1 128x128, HEVC 144x144, H.264 48x16); re-prepare the corpus with a larger --size"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "critical error in pipeline" not in ln.lower()]
    return "DALI's GPU video decoder failed on a probe clip: " + (" ".join(lines[:2]) or text.strip())


_PROBED: set[int] = set()


def probe_gpu_decode(clip: bytes, device: torch.device) -> None:
    """Decode one clip with DALI's "mixed" decoder, once per CUDA device and process, so a driver without the
    video library fails at start-up with what to do (explain_gpu_decode_error), not mid-run."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _PROBED:
        return
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    data = np.frombuffer(clip, dtype=np.uint8)
    try:
        pipe = Pipeline(batch_size=1, num_threads=1, device_id=index, exec_dynamic=True)
        with pipe:
            encoded = fn.external_source(source=lambda: [data], batch=True, dtype=types.UINT8)
            pipe.set_outputs(fn.decoders.video(encoded, device="mixed", sequence_length=1, affine=False))
        pipe.build()
        pipe.run()
    except Exception as e:  # DALI raises RuntimeError with its C++ text; any failure here is the same story
        raise RuntimeError(explain_gpu_decode_error(str(e))) from e
    _PROBED.add(index)


class DaliClipDecoder(ClipDecoder):
    """A ClipDecoder running one DALI pipeline: ``fn.external_source`` feeds it, ``fn.decoders.video`` decodes
    and DLPack hands the frames to torch without a copy. ``dali_device``: "mixed" (NVDEC; CUDA devices only)
    or "cpu" (on a CUDA device the frames are then copied there through pinned memory); None = "mixed" on a
    CUDA device, else "cpu"."""

    def __init__(self, batches: EncodedBatches, *, dali_device: str | None = None, **settings: Any) -> None:
        self.dali_device = dali_device
        super().__init__(batches, **settings)

    def _start(self, batches: EncodedBatches) -> None:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        device = self.device
        if self.dali_device is None:
            self.dali_device = "mixed" if device.type == "cuda" else "cpu"
        if self.dali_device not in DALI_DEVICES or (self.dali_device == "mixed" and device.type != "cuda"):
            raise ValueError(f"dali_device must be 'cpu', or 'mixed' on a CUDA device; got {self.dali_device!r}")
        # The feeder holds no reference back to this object, so dropping it frees the pipeline at once.
        self._feeder = _Feeder(batches)
        on_gpu = self.dali_device == "mixed"
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
            encoded, tag, start = fn.external_source(
                source=self._feeder, num_outputs=3, batch=True, dtype=[types.UINT8, types.INT64, types.INT32]
            )
            # affine=False: srun already binds each task to its CPUs; DALI would otherwise pin its threads to
            # cores of its own choosing (the GPU's NVML affinity), overriding that binding.
            # The temporal crop is the decoder's own per-sample start_frame: it seeks (frame index) to the
            # keyframe at or before it and decodes on, so only num_frames frames per clip leave the decoder
            # (slicing a whole decoded clip would hold up to max_clip_seconds x fps frames in GPU memory). Frames
            # are numbered in presentation order from 0, as PyAV decodes them: both backends crop alike.
            video = fn.decoders.video(
                encoded,
                device=self.dali_device,
                start_frame=start,
                sequence_length=self.num_frames,
                pad_mode=self.pad_mode,
                affine=False,
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
        if self.dali_device == "mixed":
            with self.device:
                return torch.from_dlpack(video.as_tensor()), payload
        return to_device(torch.from_dlpack(video.as_tensor()), self.device), payload

    def close(self) -> None:
        """Stop the pipeline's threads now."""
        self._pipe = None


class _Feeder:
    """The external_source callback: the next batch of encoded clips, remembering its payload."""

    def __init__(self, batches: EncodedBatches) -> None:
        self.batches = batches
        self.payloads: deque[tuple[int, Any]] = deque()
        self.fed = 0

    def __call__(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        clips, payload, starts = encoded_batch(next(self.batches))
        n = self.fed
        self.fed += 1
        self.payloads.append((n, payload))
        # Each sample carries its batch number through the pipeline to check outputs match payloads.
        tags = [np.array(n, dtype=np.int64)] * len(clips)
        return [np.frombuffer(c, dtype=np.uint8) for c in clips], tags, [np.array(s, dtype=np.int32) for s in starts]
