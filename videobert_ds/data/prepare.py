"""videobert-prepare: raw videos + transcripts -> WebDataset tar shards (VideoBERT samples).

One sample per transcript cue (VideoBERT's segmentation), or fixed windows for videos without
a transcript, or one whole-video sample for a caption. Each video is decoded in one streaming
pass (``video_io``); every clip is encoded in memory, decoded back, then written to a split's
shard (``shards``). Under ``mpirun``/``srun`` the inputs are dealt round-robin to the ranks and
rank 0 publishes all shards with one manifest.json and report.json.

Bad input never stops the run: each skipped or degraded input, cue or field is counted by
reason in report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videobert_ds.data.shards import (
    REPORT,
    ShardRecord,
    SplitShardWriter,
    is_complete,
    publish,
    remove_published,
    write_json_atomic,
)
from videobert_ds.data.transcripts import Cue, TranscriptError, decode_text, load_transcript
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

__all__ = ["PrepareError", "PrepareOptions", "main", "prepare_corpus", "read_manifest"]

PROG = "videobert-prepare"
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Env vars set by MPI launchers (Open MPI, MPICH/Hydra and SLURM PMI2, PMIx): read before mpi4py
# is imported so a plain run never initialises MPI.
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


class PrepareError(Exception):
    """A problem with the run's arguments or output directory (not with an input video)."""


@dataclass(frozen=True)
class PrepareOptions:
    """How clips are cut and stored; validated on construction."""

    codec: str = "vp9"
    fps: float = 10.0
    size: int = 112
    samples_per_shard: int = 256
    window: float = 4.0
    max_clip_seconds: float = 8.0
    min_clip_seconds: float = 0.5
    decode_threads: int = 0

    def __post_init__(self) -> None:
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
        if not isinstance(self.decode_threads, int) or self.decode_threads < 0:
            raise PrepareError(f"decode_threads must be an integer >= 0, got {self.decode_threads!r}")


# ----------------------------------------------------------------------------- input manifest


@dataclass
class Entry:
    """One usable manifest line."""

    line: int
    id: str
    key: str  # id made safe for tar member names (no dots: webdataset and DALI split there)
    video: Path
    transcript: Path | None
    caption: str | None
    split: str
    raw: dict[str, Any]


@dataclass
class Skip:
    """An input (manifest line) that produced no sample, and why."""

    line: int
    reason: str
    detail: str
    id: str | None = None
    video: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def sample_key_prefix(video_id: str) -> str:
    """The id as used in sample keys: [A-Za-z0-9_-] only (webdataset and DALI split names at the
    first dot), at most 80 characters (tar ustar names); a lossy mapping gets a hash suffix
    so distinct ids stay distinct."""
    safe = _SAFE.sub("_", video_id)
    if safe == video_id and len(safe) <= 80:
        return safe
    return f"{safe[:71]}_{hashlib.sha1(video_id.encode('utf-8')).hexdigest()[:8]}"


def read_manifest(path: Path) -> tuple[list[Entry], list[Skip], int]:
    """Parse the JSONL input manifest; returns (entries, skipped lines, inputs seen).

    Pure function of the file, so every MPI rank computes the same entries and duplicates.
    """
    base = path.parent
    text, _ = decode_text(path.read_bytes())
    entries: list[Entry] = []
    skips: list[Skip] = []
    keys: set[str] = set()
    seen = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        seen += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            skips.append(Skip(n, "manifest_line_malformed", f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("video"), str) or not rec["video"]:
            skips.append(Skip(n, "manifest_line_malformed", "a line must be an object with a 'video' path"))
            continue
        video = base / rec["video"]
        vid = rec.get("id")
        vid = str(vid) if vid not in (None, "") else Path(rec["video"]).stem
        split = rec.get("split", "train")
        if not isinstance(split, str) or not _SPLIT_RE.match(split):
            skips.append(Skip(n, "split_invalid", f"split must match [A-Za-z0-9_-]+, got {split!r}", vid, rec["video"]))
            continue
        key = sample_key_prefix(vid)
        if key in keys:
            skips.append(Skip(n, "duplicate_id", f"id {vid!r} (key {key!r}) already used", vid, rec["video"]))
            continue
        keys.add(key)
        tr = rec.get("transcript")
        transcript = base / tr if isinstance(tr, str) and tr else None
        cap = rec.get("caption")
        caption = cap.strip() if isinstance(cap, str) and cap.strip() else None
        entries.append(Entry(n, vid, key, video, transcript, caption, split, rec))
    return entries, skips, seen


# ----------------------------------------------------------------------------- labels and QA


def _span(a: Any) -> tuple[float, float] | None:
    try:
        s, e = float(a["start"]), float(a["end"])
    except (KeyError, TypeError, ValueError):
        return None
    return (s, e) if math.isfinite(s) and math.isfinite(e) and e > s else None


def valid_qa(qa: Any) -> bool:
    """question: str, choices: list of >= 2 str, answer: int index into choices."""
    return (
        isinstance(qa, dict)
        and isinstance(qa.get("question"), str)
        and isinstance(qa.get("choices"), list)
        and len(qa["choices"]) >= 2
        and all(isinstance(c, str) for c in qa["choices"])
        and isinstance(qa.get("answer"), int)
        and not isinstance(qa.get("answer"), bool)
        and 0 <= qa["answer"] < len(qa["choices"])
    )


class Annotator:
    """Video-level labels merged with those of the annotation overlapping a span most."""

    def __init__(self, raw: dict[str, Any], reasons: Counter) -> None:
        self.labels: dict[str, Any] = {}
        labels = raw.get("labels")
        if isinstance(labels, dict):
            self.labels = labels
        elif labels is not None:
            reasons["labels_malformed"] += 1
        self.annotations: list[tuple[float, float, dict[str, Any]]] = []
        anns = raw.get("annotations")
        if anns is None:
            return
        if not isinstance(anns, list):
            reasons["annotations_malformed"] += 1
            return
        for a in anns:
            span = _span(a) if isinstance(a, dict) else None
            if span is None:
                reasons["annotation_malformed"] += 1
                continue
            self.annotations.append((span[0], span[1], a))

    def fields(self, start: float, end: float, reasons: Counter) -> dict[str, Any]:
        best, overlap = None, 0.0
        for a0, a1, ann in self.annotations:
            ov = min(end, a1) - max(start, a0)
            if ov > overlap:
                best, overlap = ann, ov
        out: dict[str, Any] = {}
        labels = dict(self.labels)
        if best is not None:
            if isinstance(best.get("labels"), dict):
                labels.update(best["labels"])
            elif best.get("labels") is not None:
                reasons["labels_malformed"] += 1
            if "qa" in best:
                if valid_qa(best["qa"]):
                    q = best["qa"]
                    out["qa"] = {"question": q["question"], "choices": list(q["choices"]), "answer": q["answer"]}
                else:
                    reasons["qa_malformed"] += 1
        if labels:
            out["labels"] = labels
        return out


# ----------------------------------------------------------------------------- one video


@dataclass
class VideoResult:
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
    """Choose the segmentation: ("cues", segments, texts) | ("caption", ...) | ("windows", ...)."""
    cues: list[Cue] | None = None
    if entry.transcript is not None:
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
    if entry.caption is not None:
        return "caption", [Segment(0, 0.0, opts.max_clip_seconds)], {0: entry.caption}
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

    if not entry.video.exists():
        return skip("video_missing", f"video not found: {entry.video}")
    if entry.video.is_file() and entry.video.stat().st_size == 0:
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
            files = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8"), ext: data}
            res.samples.append((entry.split, f"{entry.key}_{seg.index:05d}", files, meta.get("labels") or {}))
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


# ----------------------------------------------------------------------------- MPI


def _launcher_rank() -> int:
    for var in _MPI_RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def mpi_comm() -> Any | None:
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else None."""
    if not any(v in os.environ for v in _MPI_SIZE_VARS):
        if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
            # Tasks that cannot talk would each publish the whole corpus into the same dir.
            raise PrepareError("srun started several tasks without MPI: use srun --mpi=pmix (or pmi2)")
        return None
    from mpi4py import MPI  # imported only under a launcher: plain runs never init MPI

    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


# ----------------------------------------------------------------------------- the run


def _progress(items: list[Entry], rank: int, world: int, show: bool | None) -> Any:
    tty = sys.stderr.isatty() if show is None else show
    return tqdm(items, desc=f"prepare r{rank}" if world > 1 else "prepare", unit="video",
                disable=not tty or rank != 0, file=sys.stderr)


def _run_rank(entries: list[Entry], opts: PrepareOptions, tmp: Path, rank: int, world: int,
              progress: bool | None) -> dict[str, Any]:
    """Process this rank's share of the inputs; returns its partial report and shard records."""
    mine = entries[rank::world]
    writer = SplitShardWriter(tmp, opts.samples_per_shard, rank)
    reasons: Counter = Counter()
    skips: list[dict[str, Any]] = []
    degraded: list[dict[str, Any]] = []
    label_values: dict[str, dict[str, set[str]]] = {}  # split -> label set -> values seen
    written = 0
    tty = sys.stderr.isatty() if progress is None else progress
    try:
        bar = _progress(mine, rank, world, progress)
        for i, entry in enumerate(bar, start=1):
            try:
                res = process_video(entry, opts)
            except Exception as e:  # noqa: BLE001 - an input nobody foresaw must not end the run
                res = VideoResult(skip=Skip(entry.line, "video_error", f"{type(e).__name__}: {e}",
                                            entry.id, entry.raw["video"]))
            reasons.update(res.reasons)
            for split, key, files, labels in res.samples:
                writer.write(split, key, files)
                for name, value in labels.items():
                    label_values.setdefault(split, {}).setdefault(str(name), set()).add(str(value))
            written += len(res.samples)
            if res.skip is not None:
                reasons[res.skip.reason] += 1
                skips.append(res.skip.as_dict())
            elif res.reasons:
                degraded.append({"line": entry.line, "id": entry.id, "reasons": dict(sorted(res.reasons.items()))})
            if not tty:
                status = f"skipped ({res.skip.reason})" if res.skip else f"{len(res.samples)} samples"
                print(f"[{PROG} r{rank}] {i}/{len(mine)} {entry.id}: {status}", file=sys.stderr, flush=True)
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"reasons": reasons, "skips": skips, "degraded": degraded, "written": written, "records": records,
            "labels": label_values}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a directory")
    if is_complete(out) and not overwrite:
        raise PrepareError(f"output {out} already holds a prepared corpus (use --overwrite to replace it)")


def prepare_corpus(
    manifest: Path,
    out: Path,
    codec: str = "vp9",
    fps: float = 10.0,
    size: int = 112,
    samples_per_shard: int = 256,
    window: float = 4.0,
    max_clip_seconds: float = 8.0,
    min_clip_seconds: float = 0.5,
    overwrite: bool = False,
    decode_threads: int = 0,
    progress: bool | None = None,
    comm: Any | None = "auto",
) -> dict[str, Any]:
    """Prepare the corpus listed in ``manifest`` into shards under ``out``; returns the report
    (also written to ``out/report.json``). Under MPI every rank calls this and gets the report.

    ``comm``: an mpi4py communicator, None for a single process, or "auto" (detect a launcher).
    Raises PrepareError for bad arguments or an existing complete output without ``overwrite``.
    """
    opts = PrepareOptions(codec, float(fps), size, samples_per_shard, float(window),
                          float(max_clip_seconds), float(min_clip_seconds), decode_threads)
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise PrepareError(f"manifest not found: {manifest}")
    if isinstance(comm, str) and comm == "auto":
        comm = mpi_comm()
    rank, world = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    t0 = time.time()

    # Rank 0 decides (output check, run id) and everyone follows, so ranks never disagree.
    decision: dict[str, Any] = {}
    if rank == 0:
        try:
            _check_out(out, overwrite)
            out.mkdir(parents=True, exist_ok=True)
            decision = {"run": f"{uuid.uuid4().hex[:12]}"}
        except PrepareError as e:
            decision = {"error": str(e)}
    if comm is not None:
        decision = comm.bcast(decision, root=0)
    if "error" in decision:
        raise PrepareError(decision["error"])
    tmp = out / f".partial-{decision['run']}"

    entries, line_skips, seen = read_manifest(manifest)
    try:
        part: dict[str, Any] | None = _run_rank(entries, opts, tmp, rank, world, progress)
        failure = None
    except Exception as e:  # noqa: BLE001 - reported to rank 0 so no rank hangs in gather
        part, failure = None, f"rank {rank}: {type(e).__name__}: {e}"
    parts = comm.gather((part, failure), root=0) if comm is not None else [(part, failure)]

    report: dict[str, Any] | None = None
    if rank == 0:
        failures = [f for _, f in parts if f]
        if failures:
            shutil.rmtree(tmp, ignore_errors=True)
            report = {"error": "; ".join(failures)}
        else:
            report = _finish(out, tmp, parts, line_skips, seen, opts, manifest, world, overwrite, t0)
    if comm is not None:
        report = comm.bcast(report, root=0)
    if "error" in report:
        raise RuntimeError(f"prepare failed: {report['error']}")
    return report


def _finish(out: Path, tmp: Path, parts: list, line_skips: list[Skip], seen: int, opts: PrepareOptions,
            manifest: Path, world: int, overwrite: bool, t0: float) -> dict[str, Any]:
    """Rank 0: merge the ranks' parts, publish shards, write report.json then manifest.json."""
    reasons: Counter = Counter()
    skips = [s.as_dict() for s in line_skips]
    for s in line_skips:
        reasons[s.reason] += 1
    degraded: list[dict[str, Any]] = []
    records: list[ShardRecord] = []
    labels: dict[str, dict[str, set[str]]] = {}
    written = 0
    for part, _ in parts:
        reasons.update(part["reasons"])
        skips += part["skips"]
        degraded += part["degraded"]
        records += part["records"]
        written += part["written"]
        for split, sets in part["labels"].items():
            for name, values in sets.items():
                labels.setdefault(split, {}).setdefault(name, set()).update(values)
    per_split: Counter = Counter()
    for r in records:
        per_split[r.split] += r.count
    # Label values per split, so a fine-tuning run sizes its heads without reading every sample.
    meta = {"codec": opts.codec, "ext": CODECS[opts.codec][1], "fps": opts.fps, "size": opts.size,
            "samples_per_shard": opts.samples_per_shard,
            "labels": {split: {name: sorted(v) for name, v in sorted(sets.items())} for split, sets in sorted(labels.items())}}
    report = {
        "manifest": str(manifest),
        **meta,
        "ranks": world,
        "inputs_seen": seen,
        "inputs_written": seen - len(skips),
        "inputs_skipped": sorted(skips, key=lambda s: s["line"]),
        "inputs_degraded": sorted(degraded, key=lambda s: s["line"]),
        "samples_written": written,
        "samples_per_split": dict(sorted(per_split.items())),
        "reasons": dict(sorted(reasons.items())),
        "seconds": round(time.time() - t0, 3),
    }
    remove_published(out)  # an old corpus (--overwrite) or shards of a run killed while publishing
    write_json_atomic(out / REPORT, report)
    publish(out, records, meta)  # manifest.json last: it marks the directory complete
    shutil.rmtree(tmp, ignore_errors=True)
    for stale in out.glob(".partial-*"):  # left by runs that were killed
        shutil.rmtree(stale, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(message)


def _fail(message: str, code: int = 2) -> None:
    if _launcher_rank() == 0:  # one line per job, not one per MPI rank
        print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _positive(kind: type) -> Any:
    def conv(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {s!r}")
        return v

    conv.__name__ = kind.__name__
    return conv


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Cut raw videos + transcripts into WebDataset tar shards of "
                "VideoBERT samples (one clip + json per transcript cue).")
    p.add_argument("--manifest", type=Path, required=True, help="input JSONL, one video a line")
    p.add_argument("--out", type=Path, required=True, help="shard directory to write")
    p.add_argument("--codec", choices=sorted(CODECS), default="vp9", help="clip codec: vp9 (webm) or h264 (mp4)")
    p.add_argument("--fps", type=_positive(float), default=10.0, help="output frame rate")
    p.add_argument("--size", type=_positive(int), default=112, help="output frames are SIZE x SIZE")
    p.add_argument("--samples-per-shard", type=_positive(int), default=256)
    p.add_argument("--window", type=_positive(float), default=4.0, help="seconds per video-only sample (videos without transcript)")
    p.add_argument("--max-clip-seconds", type=_positive(float), default=8.0, help="longer cues are cut")
    p.add_argument("--min-clip-seconds", type=float, default=0.5, help="shorter cues are skipped")
    p.add_argument("--decode-threads", type=int, default=0, help="source decoder threads (0: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.manifest.is_file():
        _fail(f"manifest not found: {args.manifest}")
    try:
        report = prepare_corpus(
            args.manifest, args.out, codec=args.codec, fps=args.fps, size=args.size,
            samples_per_shard=args.samples_per_shard, window=args.window,
            max_clip_seconds=args.max_clip_seconds, min_clip_seconds=args.min_clip_seconds,
            overwrite=args.overwrite, decode_threads=args.decode_threads, progress=args.progress,
        )
    except PrepareError as e:
        _fail(str(e))
    if _launcher_rank() == 0:
        skipped = len(report["inputs_skipped"])
        print(f"{PROG}: {report['samples_written']} samples from {report['inputs_seen']} inputs "
              f"({skipped} skipped) -> {args.out} {report['samples_per_split']}", file=sys.stderr)
    if report["samples_written"] == 0:
        _fail(f"no samples written (reasons in {args.out / REPORT})", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
