"""The inputs of a run: Entry (one video to cut), Skip (an input that gave none, and why), the JSONL input manifest
(one JSON object a line naming a video, its transcript or caption, split and labels) and the InputSource protocol
that the published annotation formats (videobert_ds.data.annotations) implement too.

A line that cannot become a sample is not an error: it becomes a Skip with a reason, counted in report.json.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from videobert_ds.data.prepare.options import PrepareError
from videobert_ds.data.transcripts import Cue, decode_text

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Entry:
    """One usable input: a manifest line or a video of an annotation file."""

    line: int  # the manifest line, or the video's position in the annotation file (report.json sorts by it)
    id: str
    key: str  # id made safe for tar member names (no dots: webdataset and DALI split there)
    video: Path
    transcript: Path | None
    caption: str | None
    split: str
    raw: dict[str, Any]
    cues: list[Cue] | None = None  # inline cues from an annotation file, used instead of a transcript file
    captions: list[str] | None = None  # several captions of the whole clip (MSR-VTT): one sample each
    issues: Counter = field(default_factory=Counter)  # cues/captions dropped while reading, counted by reason


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


@dataclass
class Inputs:
    """What an input source read: the usable entries, the inputs skipped, how many inputs it saw, problems not
    tied to one input (e.g. a caption naming an unknown video), and what was read, for report.json."""

    entries: list[Entry]
    skips: list[Skip]
    seen: int
    reasons: Counter = field(default_factory=Counter)
    info: dict[str, Any] = field(default_factory=dict)


class InputSource(Protocol):
    """Where a run's inputs come from. ``check`` is cheap and runs before the output dir is touched; ``read`` is
    a pure function of the files (every MPI rank calls it and must get the same entries). Both raise
    PrepareError (one line) for a missing, unreadable or malformed input file."""

    def check(self) -> None: ...

    def read(self) -> Inputs: ...


class KeyRegistry:
    """The sample key prefixes one source has used: a second input with the same key is a duplicate."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def claim(self, video_id: str) -> str | None:
        """The key of ``video_id``, or None when another input already has it."""
        key = sample_key_prefix(video_id)
        if key in self._used:
            return None
        self._used.add(key)
        return key


def valid_split(split: Any) -> bool:
    """Split names become file names and manifest keys: [A-Za-z0-9_-]+ only."""
    return isinstance(split, str) and bool(_SPLIT_RE.match(split))


class ManifestSource:
    """The JSONL input manifest (``--manifest``, ``--format jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def check(self) -> None:
        if not self.path.is_file():
            raise PrepareError(f"manifest not found: {self.path}")

    def read(self) -> Inputs:
        try:
            entries, skips, seen = read_manifest(self.path)
        except OSError as e:
            raise PrepareError(f"cannot read manifest {self.path}: {e.strerror or e}") from None
        return Inputs(entries, skips, seen, info={"format": "jsonl", "manifest": str(self.path)})


def read_manifest(path: Path) -> tuple[list[Entry], list[Skip], int]:
    """Parse the JSONL input manifest; returns (entries, skipped lines, inputs seen).

    Pure function of the file, so every MPI rank computes the same entries and duplicates.
    """
    base = path.parent
    text, _ = decode_text(path.read_bytes())
    entries: list[Entry] = []
    skips: list[Skip] = []
    keys = KeyRegistry()
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
        if not valid_split(split):
            skips.append(Skip(n, "split_invalid", f"split must match [A-Za-z0-9_-]+, got {split!r}", vid, rec["video"]))
            continue
        key = keys.claim(vid)
        if key is None:
            detail = f"id {vid!r} (key {sample_key_prefix(vid)!r}) already used"
            skips.append(Skip(n, "duplicate_id", detail, vid, rec["video"]))
            continue
        tr = rec.get("transcript")
        transcript = base / tr if isinstance(tr, str) and tr else None
        cap = rec.get("caption")
        caption = cap.strip() if isinstance(cap, str) and cap.strip() else None
        entries.append(Entry(n, vid, key, video, transcript, caption, split, rec))
    return entries, skips, seen
