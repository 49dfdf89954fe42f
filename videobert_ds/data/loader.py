"""The training-side clip loader: shard dir + split -> batches of uint8 frames on the device.

    loader = build_clip_loader("shards/", "train", batch_size=8, num_frames=16, rank=r, world_size=w)
    for epoch in range(E):
        for batch in loader:          # the rest of the current epoch, then the epoch advances
            batch.frames              # uint8 (B, T, H, W, C) on the device
            batch.num_frames          # int64 (B,): true frames per clip, min(json num_frames, T)
            batch.meta                # the samples' json dicts, plus "__key__"
    state = loader.state_dict()       # {"epoch": e, "batches_in_epoch": n}; load_state_dict resumes there

The shards are one location (a folder, an http(s) URL of one, a brace pattern, a pipe: command, an fsspec URL:
sources.py) or several weighted ones, [(location, weight), ...]. With on_error="skip" a shard or sample that
cannot be read or parsed (or whose video bytes are no container the decoders read) is skipped, counted
(ClipBatch.data_counts) and made up from the rank's other samples, so every rank still takes steps_per_epoch
steps; past max_skip_share of the samples read the loader raises sources.SkippedTooMany (one line). A clip that
passes those checks but fails inside the decoder is not skipped (DALI cannot): validate clips when preparing.

Which samples each rank gets, and in which order, is sampling.py; decoding is DALI
(decoders/dali.py) or PyAV (decoders/pyav.py), behind one contract (decoders/base.py). choose_decoder
picks by device, codec and frame size: on a GPU, NVDEC ("mixed") where the clips are at least its minimum
size for the codec (decoders/nvdec.py), else DALI's CPU decoder (VP8/VP9) or PyAV, then a pinned copy.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from videobert_ds.data.crops import TEMPORAL_CROPS, crop_starts
from videobert_ds.data.decoders.base import PAD_MODES, ClipDecoder, EncodedBatch, EncodedBatches, to_device
from videobert_ds.data.decoders.dali import DaliClipDecoder, dali_decode_device, probe_gpu_decode
from videobert_ds.data.decoders.nvdec import nvdec_min_size
from videobert_ds.data.decoders.pyav import PyAVClipDecoder
from videobert_ds.data.position import EpochPosition
from videobert_ds.data.sampling import RawSample, ShardInfo, Source, planned_counts, steps_per_epoch
from videobert_ds.data.sources import ReadPolicy, SkipCounts, check_skip_share, open_tar, read_manifest
from videobert_ds.data.sources import split_shards as _split_shards

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
    # This rank's samples read ("seen") and skipped per reason ("skipped_read", ...) since the loader was built,
    # as of this batch (a resumed run recounts the replayed part of its epoch); None when on_error is "raise".
    data_counts: dict[str, int] | None = None


def read_shard_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """manifest.json of a shard location (a folder, URL, pattern or pipe:, sources.py), with a one-line error."""
    return read_manifest(shard_dir)


def split_shards(shard_dir: str | Path, manifest: dict[str, Any], split: str) -> list[ShardInfo]:
    """The split's shards in manifest order (paths or URLs); ValueError for an unknown or empty split."""
    return _split_shards(shard_dir, manifest, split)


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
    """The first encoded clip in a tar shard, a path or URL (for the start-up probe)."""
    with open_tar(str(shard)) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
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
    resampled: bool = False  # draw shards with replacement by weight (sampling.py) instead of epoch passes
    on_error: str = "raise"  # "skip": a bad shard or sample is skipped and counted (see the module docstring)
    max_skip_share: float = 0.01  # with "skip": more skipped samples than this share of those read is an error
    retries: int = 3  # re-opens of a remote shard whose read failed (position-exact), before on_error applies
    retry_backoff_s: float = 1.0  # the first retry's wait, doubling after each


# The shards a loader reads: one location, or several weighted ones [(location, weight), ...].
ShardSources = str | Path | Sequence[tuple[str | Path, float]]


def resolve_sources(shards: ShardSources, split: str) -> tuple[dict[str, Any], list[Source]]:
    """(the first location's manifest, a Source per location with the split's shards). The locations must agree
    on codec and frame size (their clips share one decoder); a location without the split is left out, unless
    none has it."""
    pairs = [(shards, 1.0)] if isinstance(shards, (str, Path)) else [(loc, float(w)) for loc, w in shards]
    if not pairs:
        raise ValueError("no shard sources given")
    first: dict[str, Any] | None = None
    sources: list[Source] = []
    missing: list[str] = []
    for loc, weight in pairs:
        manifest = read_shard_manifest(loc)
        if first is None:
            first = manifest
        else:
            mine, theirs = _clip_format(manifest), _clip_format(first)
            if mine != theirs:
                raise ValueError(f"shard sources differ in clip format: {pairs[0][0]} {theirs}, {loc} {mine}")
        try:
            sources.append(Source(tuple(split_shards(loc, manifest, split)), weight))
        except ValueError as err:
            if len(pairs) == 1:
                raise
            missing.append(str(err))
    if not sources:
        raise ValueError("; ".join(missing))
    return first, sources


def _clip_format(manifest: dict[str, Any]) -> tuple[Any, ...]:
    return manifest.get("codec", "vp9"), manifest_frame_size(manifest)


class ClipLoader(EpochPosition[ClipBatch]):
    """Deterministic, resumable batches of decoded clips for one rank. Build with build_clip_loader."""

    _stream: ClipDecoder | None  # the position (epoch, batches, state_dict, resume) is position.EpochPosition's

    def __init__(
        self,
        shard_dir: ShardSources,
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
        if not 0 <= o.max_skip_share <= 1:
            raise ValueError(f"max_skip_share must be in [0, 1], got {o.max_skip_share}")
        manifest, self.sources = resolve_sources(shard_dir, split)
        self.shards = [s for src in self.sources for s in src.shards]
        self.resampled, self.max_skip_share = o.resampled, o.max_skip_share
        check = _check_sample if o.on_error == "skip" else None
        self.policy = ReadPolicy(o.on_error, o.retries, o.retry_backoff_s, check)
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
        steps = steps_per_epoch(planned_counts(self.sources), o.world_size, batch_size)
        self._start(steps, sum(s.num_samples for s in self.shards))
        self._counts_done: Counter[str] = Counter()  # data counts of closed streams, as of their last batch out
        self._counts_live: dict[str, int] = {}  # the open stream's, as of its last batch out

    def _open_stream(self) -> ClipDecoder:
        choice = DecoderChoice(self.backend, self.dali_device)
        settings = {name: getattr(self, name) for name in _DECODER_SETTINGS}
        return open_decoder(choice, self._encoded_batches(), **settings)

    def _emit(self, item: tuple[torch.Tensor, tuple[list[dict[str, Any]], dict[str, int] | None]]) -> ClipBatch:
        frames, (meta, data_counts) = item
        if data_counts is not None:
            self._counts_live = data_counts
            data_counts = self.data_counts()
            skips = SkipCounts(data_counts["seen"], {k[8:]: v for k, v in data_counts.items() if k != "seen"})
            where = f"{self.split} split, rank {self.rank}"
            check_skip_share(skips, self.max_skip_share, self.steps_per_epoch * self.batch_size, where)
        counts = [min(int(m["num_frames"]), self.num_frames) for m in meta]
        counts_t = to_device(torch.tensor(counts, dtype=torch.int64), self.device)
        return ClipBatch(frames, counts_t, meta, data_counts)

    def data_counts(self) -> dict[str, int]:
        """Samples read ("seen") and skipped per reason ("skipped_read", "skipped_json", "skipped_video") as of
        the last batch handed out, since the loader was built (zeros with on_error="raise")."""
        return dict(SkipCounts().snapshot()) | dict(self._counts_done + Counter(self._counts_live))

    def close(self) -> None:
        """Drop the decoder and its prefetched batches; the next iteration rebuilds it at the saved position."""
        if self._stream is not None:
            self._stream.close()
        super().close()
        self._counts_done.update(self._counts_live)
        self._counts_live = {}

    def _encoded_batches(self) -> Iterator[EncodedBatch]:
        # Which samples and in which order (sampling.py), from the position the trainer has reached.
        counts = SkipCounts()
        stream = self._batch_stream(self.sources, resampled=self.resampled, policy=self.policy, counts=counts)
        skipping = self.policy.on_error == "skip"
        first = self._epoch * self.steps_per_epoch + self._batches  # the stream's position, in batches
        for n, samples in enumerate(stream, first):
            meta = [_sample_meta(s) for s in samples]
            epoch = n // self.steps_per_epoch  # crops are drawn anew each epoch (crops.py)
            starts = crop_starts(self.temporal_crop, meta, self.num_frames, seed=self.seed, epoch=epoch)
            payload = (meta, counts.snapshot() if skipping else None)
            yield EncodedBatch([_video_bytes(s) for s in samples], payload, starts)


def _video_bytes(sample: RawSample) -> bytes:
    for ext in VIDEO_EXTS:
        if ext in sample:
            return sample[ext]
    raise RuntimeError(
        f"sample {sample['__key__']} in {sample.get('__url__')} has no video member ({', '.join(VIDEO_EXTS)})"
    )


# The first bytes of the containers the decoders read: Matroska/WebM (EBML), MP4/MOV boxes, AVI (RIFF).
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


def _check_sample(sample: RawSample) -> tuple[str, str] | None:
    """What makes a sample unusable before decoding, cheaply: (reason, why), or None (on_error="skip" only)."""
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict) or "num_frames" not in meta:
            return "json", "its json is not a clip's metadata (no num_frames)"
    except (KeyError, ValueError, TypeError) as err:
        return "json", f"no readable json ({type(err).__name__})"
    data = next((sample[ext] for ext in VIDEO_EXTS if ext in sample), None)
    if data is None:
        return "video", f"no video member ({', '.join(VIDEO_EXTS)})"
    if not (data[:4] == b"\x1a\x45\xdf\xa3" or data[4:8] in _MP4_BOXES or data[:4] == b"RIFF"):
        return "video", f"its video member ({len(data)} bytes) is not a WebM/Matroska, MP4/MOV or AVI container"
    return None


def _sample_meta(sample: RawSample) -> dict[str, Any]:
    meta = json.loads(sample["json"])
    meta["__key__"] = sample["__key__"]
    return meta


def build_clip_loader(
    shard_dir: ShardSources, split: str, batch_size: int, num_frames: int, **options: Any
) -> ClipLoader:
    """A ClipLoader for one rank of ``split`` in ``shard_dir`` (a location or [(location, weight), ...]; see the
    module docstring); ``options`` are the fields of LoaderOptions, by keyword (rank=, world_size=, seed=, ...)."""
    return ClipLoader(shard_dir, split, batch_size, num_frames, LoaderOptions(**options))
