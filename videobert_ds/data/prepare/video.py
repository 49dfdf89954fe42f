"""One video -> its samples: choose the segmentation (transcript cues, a caption, or fixed windows), decode
the video in one streaming pass, encode every clip in memory and decode it back to verify it."""

from __future__ import annotations

import json
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from videobert_ds.data.prepare.entries import Entry, Skip
from videobert_ds.data.prepare.labels import Annotator
from videobert_ds.data.prepare.options import PrepareOptions
from videobert_ds.data.transcripts import Cue, TranscriptError, file_kind, load_transcript
from videobert_ds.data.video_io import (
    CODECS,
    ClipError,
    DecodeStats,
    Segment,
    VideoReadError,
    encode_clip,
    probe_clip,
    stream_segments,
)


@dataclass
class VideoResult:
    """The samples of one video (empty when it was skipped), and the reasons it was degraded or skipped."""

    # (split, key, files, labels): the labels also go to the manifest's per-split label values
    samples: list[tuple[str, str, dict[str, bytes], dict[str, Any]]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    skip: Skip | None = None


def _cue_segments(cues: list[Cue], opts: PrepareOptions, reasons: Counter) -> tuple[list[Segment], dict[int, str]]:
    """Cues (time-sorted; their position is the segment number) -> capped segments to cut."""
    segments, texts = [], {}
    for i, cue in enumerate(sorted(cues, key=lambda c: (c.start, c.end))):
        start, end = max(0.0, cue.start), cue.end
        if end <= 0.0:
            reasons["cue_outside_video"] += 1
            continue
        if cue.start < 0.0:
            reasons["cue_clipped"] += 1
        if end - start > opts.max_clip_seconds:
            end = start + opts.max_clip_seconds
            reasons["cue_capped"] += 1
        if end - start < opts.min_clip_seconds or end - start <= 0:
            reasons["cue_too_short"] += 1
            continue
        segments.append(Segment(i, start, end))
        texts[i] = cue.text
    return segments, texts


def _windows(opts: PrepareOptions) -> Iterator[Segment]:
    """Endless fixed windows; the decode pass stops pulling them at the end of the video."""
    length = min(opts.window, opts.max_clip_seconds)
    i = 0
    while True:
        yield Segment(i, i * opts.window, i * opts.window + length)
        i += 1


def _plan(entry: Entry, opts: PrepareOptions, reasons: Counter) -> tuple[str, Any, dict[int, str]]:
    """Choose the segmentation: ("cues", segments, texts) | ("caption", ...) | ("windows", ...). Inline cues (from an
    annotation file) stand for a transcript; several captions (MSR-VTT) share one whole-clip segment (index 0)."""
    cues: list[Cue] | None = None
    reasons.update(entry.issues)  # what reading the annotation file dropped or cut
    if entry.cues is not None:
        if entry.cues:
            cues = entry.cues
        else:
            reasons["cues_empty"] += 1
    elif entry.transcript is not None:
        try:
            tr = load_transcript(entry.transcript)
            reasons.update(tr.issues)
            if tr.cues:
                cues = tr.cues
            else:
                reasons["transcript_empty"] += 1
        except TranscriptError as e:
            reasons[e.reason] += 1
    if cues is not None:
        segments, texts = _cue_segments(cues, opts, reasons)
        return "cues", segments, texts
    captions = entry.captions or ([entry.caption] if entry.caption is not None else [])
    if captions:
        return "caption", [Segment(0, 0.0, opts.max_clip_seconds)], dict(enumerate(captions))
    return "windows", _windows(opts), {}


def process_video(entry: Entry, opts: PrepareOptions) -> VideoResult:
    """All samples of one video, encoded and verified, buffered until the video is done so a
    failure part-way leaves no sample of it in a shard."""
    res = VideoResult()
    reasons = res.reasons
    src = entry.raw["video"]

    def skip(reason: str, detail: str) -> VideoResult:
        res.samples.clear()
        res.skip = Skip(entry.line, reason, detail, entry.id, src)
        return res

    try:
        st = entry.video.stat()
    except (FileNotFoundError, NotADirectoryError):
        return skip("video_missing", f"video not found: {entry.video}")
    except OSError as e:
        return skip("video_unreadable", f"cannot read video {entry.video}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO blocks for ever, a device never ends
        return skip("video_not_a_file", f"not a regular file ({file_kind(st.st_mode)}): {entry.video}")
    if st.st_size == 0:
        return skip("video_empty", f"zero-length video: {entry.video}")
    mode, segments, texts = _plan(entry, opts, reasons)
    if mode == "cues" and not segments:
        return skip("no_samples", "no usable transcript cue")
    annot = Annotator(entry.raw, reasons)
    ext = CODECS[opts.codec][1]
    stats = DecodeStats()
    emitted: set[int] = set()
    try:
        for clip in stream_segments(entry.video, segments, opts.fps, opts.size, stats, opts.decode_threads):
            seg = clip.segment
            emitted.add(seg.index)
            if clip.end - seg.start < max(opts.min_clip_seconds, 1e-9) or len(clip.frames) == 0:
                reasons["window_too_short" if mode == "windows" else "cue_outside_video"] += 1
                continue
            if clip.clipped and mode == "cues":
                reasons["cue_clipped"] += 1
            data = encode_clip(clip.frames, opts.fps, opts.codec)
            try:
                n, w, h = probe_clip(data)
            except ClipError:
                reasons["clip_decode_failed"] += 1
                continue
            if (w, h) != (opts.size, opts.size):
                reasons["clip_decode_failed"] += 1
                continue
            if n != len(clip.frames):
                reasons["clip_frame_count_mismatch"] += 1
            meta: dict[str, Any] = {
                "text": texts.get(seg.index, ""),
                "video_id": entry.id,
                "segment": seg.index,
                "start": round(seg.start, 3),
                "end": round(clip.end, 3),
                "fps": opts.fps,
                "num_frames": n,
                "size": opts.size,
                "split": entry.split,
                "source": src,
            }
            if entry.caption is not None and mode != "caption":
                meta["caption"] = entry.caption
            meta.update(annot.fields(seg.start, clip.end, reasons))
            # One sample per caption of the clip (MSR-VTT's 20): the same encoded clip, each text keyed apart.
            variants = range(len(texts)) if mode == "caption" else [seg.index]
            for i in variants:
                meta.update(text=texts.get(i, ""), segment=i)
                files = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8"), ext: data}
                res.samples.append((entry.split, f"{entry.key}_{i:05d}", files, meta.get("labels") or {}))
    except VideoReadError as e:
        return skip(e.reason, str(e))
    if mode == "cues":
        missed = sum(1 for s in segments if s.index not in emitted)
        if missed:  # cues starting after the last frame
            reasons["cue_outside_video"] += missed
    if stats.truncated:
        reasons["video_truncated"] += 1
    elif stats.bad_packets:
        reasons["video_corrupt_packets"] += 1
    if not res.samples:
        return skip("no_samples", "no segment of the video gave a clip")
    return res
