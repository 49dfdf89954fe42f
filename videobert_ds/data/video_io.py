"""Video I/O with PyAV: one streaming decode pass that cuts time segments out of a source
video at a fixed output fps and size, in-memory clip encoding, and decode-back checking.

Resampling rule: output frame k of a segment starting at ``a`` shows the last source frame
whose presentation time is <= ``a + k / fps`` (times measured from the video stream's start).
Only target-size RGB frames of segments still open are held, so memory does not grow with
the length of the source.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "CODECS",
    "ClipError",
    "DecodeStats",
    "Segment",
    "SegmentClip",
    "VideoReadError",
    "encode_clip",
    "probe_clip",
    "stream_segments",
]

# Output codec -> (container format, file extension, PyAV encoder).
CODECS: dict[str, tuple[str, str, str]] = {
    "vp9": ("webm", "webm", "libvpx-vp9"),
    "h264": ("mp4", "mp4", "libx264"),
}

_EPS = 1e-6  # seconds; absorbs float error between grid times and frame timestamps
_MAX_BAD_PACKETS = 64  # a stream this broken is treated as ended, not retried forever


class VideoReadError(Exception):
    """A source video that yields no usable frame; ``reason`` is the report's counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClipError(Exception):
    """An encoded clip that does not decode back cleanly."""


@dataclass(frozen=True)
class Segment:
    """A time span [start, end) of the source to cut, in seconds; ``index`` is the caller's id."""

    index: int
    start: float
    end: float


@dataclass
class SegmentClip:
    """Frames (T, S, S, 3) uint8 RGB cut for one segment; ``end`` is clipped to the stream end."""

    segment: Segment
    frames: np.ndarray
    end: float
    clipped: bool


@dataclass
class DecodeStats:
    """What the decode pass saw; filled while ``stream_segments`` runs."""

    frames_decoded: int = 0
    bad_packets: int = 0
    stopped_early: bool = False
    error: str = ""
    end_time: float | None = None
    declared_duration: float | None = None
    source: dict = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        """Decoding failed for good, or ended well before the duration the header declares
        (the slack allows for audio outlasting the video in the container's duration)."""
        if self.stopped_early:
            return True
        if self.declared_duration is None or self.end_time is None:
            return False
        return self.end_time < self.declared_duration - (1.0 + 0.01 * self.declared_duration)


class _Ref:
    """A decoded source frame, converted to the square RGB target at most once, on demand."""

    __slots__ = ("frame", "_rgb", "_sar")

    def __init__(self, frame: av.VideoFrame, sar: Fraction) -> None:
        self.frame = frame
        self._sar = sar
        self._rgb: np.ndarray | None = None

    def rgb(self, size: int) -> np.ndarray:
        if self._rgb is None:
            self._rgb = _square_rgb(self.frame, size, self._sar)
            self.frame = None  # the source frame is no longer needed
        return self._rgb


def _square_rgb(frame: av.VideoFrame, size: int, sar: Fraction) -> np.ndarray:
    """Resize so the displayed short side is ``size``, apply display rotation, centre-crop."""
    rot = int(round(frame.rotation / 90.0)) % 4 if frame.rotation else 0
    disp_w = frame.width * float(sar)  # width in square pixels
    disp_h = float(frame.height)
    scale = size / min(disp_w, disp_h)
    rw = max(size, int(round(disp_w * scale)))
    rh = max(size, int(round(disp_h * scale)))
    arr = frame.reformat(width=rw, height=rh, format="rgb24").to_ndarray()
    if rot:
        arr = np.rot90(arr, k=rot)  # display matrix rotates counter-clockwise
    h, w = arr.shape[:2]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(arr[y0 : y0 + size, x0 : x0 + size])


class _OpenSegment:
    __slots__ = ("seg", "frames", "k")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.frames: list[np.ndarray] = []
        self.k = 0

    def fill(self, until: float, ref: _Ref, fps: float, size: int) -> None:
        """Give ``ref`` to every grid time before ``until`` (and before the segment end)."""
        limit = min(until, self.seg.end) - _EPS
        while self.seg.start + self.k / fps < limit:
            self.frames.append(ref.rgb(size))
            self.k += 1

    def done(self, fps: float) -> bool:
        return self.seg.start + self.k / fps >= self.seg.end - _EPS

    def clip(self, end: float) -> SegmentClip:
        frames = np.stack(self.frames) if self.frames else np.zeros((0, 0, 0, 3), np.uint8)
        clipped = self.seg.end > end + _EPS
        return SegmentClip(self.seg, frames, min(self.seg.end, end), clipped)


def _open_video(path: Path, threads: int) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoReadError("video_unreadable", f"cannot open video: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError("video_no_stream", "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.thread_count = threads
    return container, stream


def _frames(container, stream, stats: DecodeStats) -> Iterator[av.VideoFrame]:
    """Decode packet by packet: a corrupt packet is skipped; a demux failure ends the stream."""
    try:
        for packet in container.demux(stream):
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError as e:
                stats.bad_packets += 1
                stats.error = str(e)
                if stats.bad_packets > _MAX_BAD_PACKETS:
                    stats.stopped_early = True
                    return
                continue
            yield from frames
    except av.error.FFmpegError as e:
        stats.stopped_early = True
        stats.error = str(e)
        with contextlib.suppress(av.error.FFmpegError):  # frames already inside the decoder are still good
            yield from stream.decode(None)


def stream_segments(
    path: str | Path,
    segments: Iterable[Segment],
    fps: float,
    size: int,
    stats: DecodeStats | None = None,
    threads: int = 0,
) -> Iterator[SegmentClip]:
    """Cut ``segments`` (sorted by start; may be a lazy, even endless, iterator) out of the
    video in one decode pass, yielding each clip as soon as it is complete.

    Segments still open at the end of the stream are cut short there (``clipped``); segments
    starting after the end are never yielded. Raises ``VideoReadError`` when the file cannot
    be opened or yields no frame at all.
    """
    stats = stats if stats is not None else DecodeStats()
    container, stream = _open_video(Path(path), threads)
    with container:
        tb = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        sar = stream.sample_aspect_ratio or Fraction(1)
        if sar <= 0:
            sar = Fraction(1)
        stats.source = {
            "codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(rate),
        }
        if stream.duration:
            stats.declared_duration = float(stream.duration * tb)
        elif container.duration:
            stats.declared_duration = container.duration / av.time_base
        origin = stream.start_time
        seg_iter = iter(segments)
        pending = next(seg_iter, None)
        last_start = float("-inf")
        open_: list[_OpenSegment] = []
        ref: _Ref | None = None
        t = 0.0
        frame_dur = float(1 / rate)
        for frame in _frames(container, stream, stats):
            if frame.pts is None:  # no timestamps (raw streams): count frames at the nominal rate
                t_new = t + frame_dur if ref is not None else 0.0
            else:
                if origin is None:
                    origin = frame.pts
                t_new = float((frame.pts - origin) * tb)
                if frame.duration:
                    frame_dur = float(frame.duration * tb)
            # Out-of-order or repeated timestamps: the newer frame replaces the current one.
            t = max(t_new, t) if ref is not None else t_new
            new = _Ref(frame, sar)
            stats.frames_decoded += 1
            while pending is not None and pending.start < t - _EPS:
                if pending.start < last_start:
                    raise ValueError("segments must be sorted by start time")
                last_start = pending.start
                open_.append(_OpenSegment(pending))
                pending = next(seg_iter, None)
            use = ref if ref is not None else new  # grid times before the first frame take it
            still_open = []
            for o in open_:
                o.fill(t, use, fps, size)
                if o.done(fps):
                    yield o.clip(o.seg.end)
                else:
                    still_open.append(o)
            open_ = still_open
            ref = new
        if ref is None:
            reason = stats.error or "no decodable frame"
            raise VideoReadError("video_unreadable", f"no decodable video frame ({reason})")
        end = t + frame_dur
        stats.end_time = end
        while pending is not None and pending.start < end - _EPS:
            open_.append(_OpenSegment(pending))
            pending = next(seg_iter, None)
        for o in open_:
            o.fill(end, ref, fps, size)
            yield o.clip(end)


def encode_clip(frames: np.ndarray, fps: float, codec: str = "vp9", threads: int = 1) -> bytes:
    """Encode (T, S, S, 3) uint8 RGB frames to an in-memory webm (VP9) or mp4 (H.264)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (choose from {', '.join(CODECS)})")
    fmt, _, encoder = CODECS[codec]
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T>0, H, W, 3), got {frames.shape}")
    rate = Fraction(fps).limit_denominator(1001)
    if codec == "vp9":
        # Realtime VP9 in constant-quality mode: fast, and decodable by DALI's CPU decoder.
        options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "lag-in-frames": "0"}
    else:
        options = {"preset": "veryfast", "crf": "23"}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        st = out.add_stream(encoder, rate=rate, options=options)
        st.width, st.height = int(frames.shape[2]), int(frames.shape[1])
        st.pix_fmt = "yuv420p"
        st.thread_count = threads
        for k, arr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vf.pts = k
            vf.time_base = 1 / rate
            out.mux(st.encode(vf))
        out.mux(st.encode(None))
    return buf.getvalue()


def probe_clip(data: bytes) -> tuple[int, int, int]:
    """Decode an encoded clip fully; returns (num_frames, width, height) or raises ClipError."""
    n, w, h = 0, 0, 0
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            if not c.streams.video:
                raise ClipError("clip has no video stream")
            for f in c.decode(video=0):
                n += 1
                w, h = f.width, f.height
    except av.error.FFmpegError as e:
        raise ClipError(f"clip does not decode: {e}") from None
    if n == 0:
        raise ClipError("clip decodes to no frame")
    return n, w, h
