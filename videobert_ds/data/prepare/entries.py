"""The input manifest: one JSON object a line naming a video, its transcript or caption, split and labels.

A line that cannot become a sample is not an error: it becomes a Skip with a reason, counted in report.json.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videobert_ds.data.transcripts import decode_text

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


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
