"""The training-side clip loader: shard dir + split -> batches of uint8 frames on the device.

    loader = build_clip_loader("shards/", "train", batch_size=8, num_frames=16, rank=r, world_size=w)
    for epoch in range(E):
        for batch in loader:          # the rest of the current epoch, then the epoch advances
            batch.frames              # uint8 (B, T, H, W, C) on the device
            batch.num_frames          # int64 (B,): true frames per clip, min(json num_frames, T)
            batch.meta                # the samples' json dicts, plus "__key__"
    state = loader.state_dict()       # {"epoch": e, "batches_in_epoch": n}; load_state_dict resumes there

Which samples each rank gets, and in which order, is sampling.py; decoding is DALI
(decoders/dali.py) or PyAV (decoders/pyav.py), behind one contract (decoders/base.py). choose_decoder
picks by device, codec and frame size: on a GPU, NVDEC ("mixed") where the clips are at least its minimum
size for the codec (decoders/nvdec.py), else DALI's CPU decoder (VP8/VP9) or PyAV, then a pinned copy.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from videobert_ds.data.crops import TEMPORAL_CROPS, crop_starts
from videobert_ds.data.decoders.base import PAD_MODES, ClipDecoder, EncodedBatch, EncodedBatches, to_device
from videobert_ds.data.decoders.dali import DaliClipDecoder, dali_decode_device, probe_gpu_decode
from videobert_ds.data.decoders.nvdec import nvdec_min_size
from videobert_ds.data.decoders.pyav import PyAVClipDecoder
from videobert_ds.data.sampling import RawSample, ShardInfo, batch_stream, steps_per_epoch

log = logging.getLogger(__name__)

VIDEO_EXTS = ("webm", "mp4", "mkv", "avi", "mov")
BACKENDS = ("auto", "dali", "pyav")
# The ClipDecoder constructor's keywords: the loader holds each under the same name.
_DECODER_SETTINGS = ("batch_size", "num_frames", "device", "num_threads", "prefetch", "pad_mode")


@dataclass
class ClipBatch:
    """One batch for the trainer."""

    frames: torch.Tensor  # uint8 (B, T, H, W, C) on the loader's device
    num_frames: torch.Tensor  # int64 (B,), on the same device
    meta: list[dict[str, Any]]  # per sample: its json plus "__key__"


def read_shard_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """manifest.json of a shard dir, with a one-line error when it is missing."""
    path = Path(shard_dir) / "manifest.json"
    if not Path(shard_dir).is_dir():
        raise FileNotFoundError(f"shard directory {shard_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {shard_dir} a directory made by videobert-prepare?")
    return json.loads(path.read_text())


def split_shards(shard_dir: str | Path, manifest: dict[str, Any], split: str) -> list[ShardInfo]:
    """The split's shards in manifest order; ValueError for an unknown or empty split."""
    shards: list[ShardInfo] = []
    splits: set[str] = set()
    for entry in manifest.get("shards", []):
        splits.add(entry["split"])
        if entry["split"] == split:
            name = entry.get("file") or entry.get("name") or entry["path"]
            shards.append(ShardInfo(Path(shard_dir) / name, int(entry["num_samples"])))
    if split not in splits:
        raise ValueError(f"split {split!r} is not in {shard_dir} (splits: {', '.join(sorted(splits)) or 'none'})")
    if sum(s.num_samples for s in shards) == 0:
        raise ValueError(f"split {split!r} of {shard_dir} has no samples")
    return shards


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else the current CUDA device when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def manifest_frame_size(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) of a shard dir's clips from its manifest ("width"/"height", or "size": N or [W, H])."""
    if "width" in manifest and "height" in manifest:
        return int(manifest["width"]), int(manifest["height"])
    size = manifest.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


class DecoderChoice(NamedTuple):
    """Which decoder reads a shard dir: ``backend`` "dali" or "pyav"; ``dali_device`` "mixed" (NVDEC) or "cpu"
    (DALI's CPU decoder, or PyAV; on a CUDA device the frames are then copied there)."""

    backend: str
    dali_device: str


_WARNED: set[tuple[str, tuple[int, int] | None, str]] = set()  # (codec, size, device) warned about NVDEC


def choose_decoder(
    backend: str, codec: str, device: torch.device, size: tuple[int, int] | None = None
) -> DecoderChoice:
    """The decoder for ``codec`` clips of ``size`` (width, height; None = unknown) on ``device``. "auto" prefers
    NVDEC on a CUDA device where the clips are at least its minimum size, then DALI's CPU decoder, then PyAV."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    where = dali_decode_device(codec, device, size)
    least = nvdec_min_size(codec)  # None: not in NVDEC's table (MJPEG), decoded on the CPU without a word
    gpu_refused = device.type == "cuda" and where != "mixed" and least is not None and size is not None
    if gpu_refused:
        too_small = f"{codec} clips of {size[0]}x{size[1]} are below NVDEC's minimum {least[0]}x{least[1]}"
    if backend == "pyav":
        return DecoderChoice("pyav", "cpu")
    if where is None:
        if gpu_refused:
            reason = f"{too_small} (the GPU decoder refuses them) and DALI's CPU decoder reads only VP8/VP9/MJPEG"
        else:
            reason = f"DALI's {device.type} video decoder cannot decode {codec} (on CPU only VP8/VP9/MJPEG)"
        if backend == "dali":
            raise ValueError(f"{reason}; use backend='pyav'" + ("" if gpu_refused else " or a GPU"))
        log.warning("clip loader: %s; decoding with PyAV instead", reason)
        return DecoderChoice("pyav", "cpu")
    if gpu_refused:
        _warn_once(
            (codec, size, device.type),
            "clip loader: %s, so a GPU cannot decode them; decoding on the CPU with DALI and copying the frames to "
            "%s (prepare at >= %dx%d to decode on the GPU)",
            too_small,
            device,
            *least,
        )
    return DecoderChoice("dali", where)


def open_decoder(choice: DecoderChoice, batches: EncodedBatches, **settings: Any) -> ClipDecoder:
    """The chosen ClipDecoder over ``batches``; ``settings`` are ClipDecoder's keywords (batch_size=, ...)."""
    if choice.backend == "dali":
        return DaliClipDecoder(batches, dali_device=choice.dali_device, **settings)
    return PyAVClipDecoder(batches, **settings)


def _warn_once(key: tuple, msg: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg, *args)


def first_clip(shard: str | Path) -> bytes:
    """The first encoded clip in a tar shard (for the start-up probe)."""
    with tarfile.open(shard, "r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.rsplit(".", 1)[-1] in VIDEO_EXTS:
                return tar.extractfile(member).read()
    raise RuntimeError(f"{shard} holds no video member ({', '.join(VIDEO_EXTS)})")


@dataclass(frozen=True)
class LoaderOptions:
    """Which share of a split one rank reads, in which order, and how it is decoded (see ClipLoader)."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True
    backend: str = "auto"  # "auto" (see choose_decoder), "dali" or "pyav"
    device: str | torch.device | None = None  # None: the current CUDA device, else the CPU
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 64
    pad_mode: str = "constant"
    # Which num_frames of a longer clip: "random" (per seed, epoch and sample key), "center" or "start" (crops.py).
    temporal_crop: str = "start"


class ClipLoader:
    """Deterministic, resumable batches of decoded clips for one rank. Build with build_clip_loader."""

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        batch_size: int,
        num_frames: int,
        options: LoaderOptions = LoaderOptions(),
    ) -> None:
        o = options
        if batch_size < 1 or num_frames < 1:
            raise ValueError(f"batch_size and num_frames must be >= 1, got {batch_size} and {num_frames}")
        if o.num_threads < 1 or o.prefetch < 1 or o.shuffle_buffer < 0:
            raise ValueError(
                f"need num_threads >= 1, prefetch >= 1, shuffle_buffer >= 0; got "
                f"{o.num_threads}, {o.prefetch}, {o.shuffle_buffer}"
            )
        if o.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {o.pad_mode!r}")
        if o.temporal_crop not in TEMPORAL_CROPS:
            raise ValueError(f"temporal_crop must be one of {TEMPORAL_CROPS}, got {o.temporal_crop!r}")
        if not 0 <= o.rank < o.world_size:
            raise ValueError(f"rank {o.rank} is outside world size {o.world_size}")
        manifest = read_shard_manifest(shard_dir)
        self.shards = split_shards(shard_dir, manifest, split)
        self.split = split
        self.codec: str = manifest.get("codec", "vp9")
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.rank, self.world_size, self.seed, self.shuffle = o.rank, o.world_size, o.seed, o.shuffle
        self.device = resolve_device(o.device)
        self.frame_size = manifest_frame_size(manifest)
        self.backend, self.dali_device = choose_decoder(o.backend, self.codec, self.device, self.frame_size)
        if self.dali_device == "mixed":  # fail now, with what to do, if this GPU cannot decode video
            probe_gpu_decode(first_clip(self.shards[0].path), self.device)
        self.num_threads, self.prefetch, self.shuffle_buffer = o.num_threads, o.prefetch, o.shuffle_buffer
        self.pad_mode, self.temporal_crop = o.pad_mode, o.temporal_crop
        self.steps_per_epoch = steps_per_epoch([s.num_samples for s in self.shards], o.world_size, batch_size)
        if self.steps_per_epoch == 0:
            total = sum(s.num_samples for s in self.shards)
            raise ValueError(
                f"split {split!r} has {total} samples: too few for {o.world_size} rank(s) x batch size {batch_size}"
            )
        self._epoch = 0
        self._batches = 0  # delivered to the trainer in this epoch
        self._decoder: ClipDecoder | None = None  # positioned at (_epoch, _batches)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, int]:
        """The data position: batches delivered so far in the current epoch (decoded-ahead ones excluded)."""
        self._roll_epoch()
        return {"epoch": self._epoch, "batches_in_epoch": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue, at the next iteration, exactly after the batches ``state`` counts."""
        epoch, batches = int(state["epoch"]), int(state["batches_in_epoch"])
        if epoch < 0 or not 0 <= batches <= self.steps_per_epoch:
            raise ValueError(f"bad loader state {state} for {self.steps_per_epoch} steps per epoch")
        self.close()
        self._epoch, self._batches = epoch, batches
        self._roll_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        self.load_state_dict({"epoch": epoch, "batches_in_epoch": 0})

    def __iter__(self) -> Iterator[ClipBatch]:
        self._roll_epoch()
        if self._decoder is None:
            self._decoder = self._make_decoder()
        decoder = self._decoder
        while self._batches < self.steps_per_epoch:
            frames, meta = next(decoder)
            self._batches += 1  # counted before the yield: a batch handed over is delivered
            counts = [min(int(m["num_frames"]), self.num_frames) for m in meta]
            yield ClipBatch(frames, to_device(torch.tensor(counts, dtype=torch.int64), self.device), meta)
        self._roll_epoch()

    def close(self) -> None:
        """Drop the decoder and its prefetched batches; the next iteration rebuilds it at the saved position."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def _roll_epoch(self) -> None:
        if self._batches >= self.steps_per_epoch:
            self._epoch, self._batches = self._epoch + 1, 0

    def _encoded_batches(self) -> Iterator[EncodedBatch]:
        # Which samples and in which order (sampling.py), from the position the trainer has reached.
        plan = {name: getattr(self, name) for name in ("seed", "rank", "world_size", "batch_size", "shuffle")}
        stream = batch_stream(
            self.shards, **plan, buffer_size=self.shuffle_buffer, start_epoch=self._epoch, skip_batches=self._batches
        )
        first = self._epoch * self.steps_per_epoch + self._batches  # the stream's position, in batches
        for n, samples in enumerate(stream, first):
            meta = [_sample_meta(s) for s in samples]
            epoch = n // self.steps_per_epoch  # crops are drawn anew each epoch (crops.py)
            starts = crop_starts(self.temporal_crop, meta, self.num_frames, seed=self.seed, epoch=epoch)
            yield EncodedBatch([_video_bytes(s) for s in samples], meta, starts)

    def _make_decoder(self) -> ClipDecoder:
        choice = DecoderChoice(self.backend, self.dali_device)
        settings = {name: getattr(self, name) for name in _DECODER_SETTINGS}
        return open_decoder(choice, self._encoded_batches(), **settings)


def _video_bytes(sample: RawSample) -> bytes:
    for ext in VIDEO_EXTS:
        if ext in sample:
            return sample[ext]
    raise RuntimeError(
        f"sample {sample['__key__']} in {sample.get('__url__')} has no video member ({', '.join(VIDEO_EXTS)})"
    )


def _sample_meta(sample: RawSample) -> dict[str, Any]:
    meta = json.loads(sample["json"])
    meta["__key__"] = sample["__key__"]
    return meta


def build_clip_loader(
    shard_dir: str | Path, split: str, batch_size: int, num_frames: int, **options: Any
) -> ClipLoader:
    """A ClipLoader for one rank of ``split`` in ``shard_dir`` (see the module docstring); ``options`` are the
    fields of LoaderOptions, by keyword (rank=, world_size=, seed=, shuffle=, backend=, device=, ...)."""
    return ClipLoader(shard_dir, split, batch_size, num_frames, LoaderOptions(**options))
