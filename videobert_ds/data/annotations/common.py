"""What the annotation formats share: reading the file, one-line errors (naming what a format expected and what the
file looks like), cue and caption cleaning, and turning one annotated video into an Entry or a Skip."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from videobert_ds.data.annotations.finder import VideoIndex
from videobert_ds.data.prepare.entries import Entry, Inputs, KeyRegistry, Skip, valid_split
from videobert_ds.data.prepare.options import PrepareError
from videobert_ds.data.transcripts import Cue, TranscriptError, cues_from_segments, decode_text

_SPACE = re.compile(r"\s+")


def read_text(path: Path, title: str) -> str:
    """The file's text (UTF-8, UTF-16 with BOM, else cp1252/latin-1); a one-line PrepareError if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {title} annotations {path}: {e.strerror or e}") from None
    text, _ = decode_text(data)
    if "\x00" in text:
        raise PrepareError(f"{path} is not a {title} annotation file: binary data")
    return text


def guess_format(text: str) -> str | None:
    """Which published format (or a JSONL manifest) a file's text looks like, for error messages; None if none."""
    head = text.lstrip("\ufeff \t\r\n")
    if head[:1] in ("{", "["):
        try:
            data = json.loads(head)
        except json.JSONDecodeError:
            first = head.split("\n", 1)[0]
            try:
                rec = json.loads(first)
            except json.JSONDecodeError:
                return None
            return "jsonl" if isinstance(rec, dict) and "video" in rec else None
        if isinstance(data, dict):
            if isinstance(data.get("database"), dict):
                return "youcook2"
            if isinstance(data.get("videos"), list) and isinstance(data.get("sentences"), list):
                return "msrvtt"
            if "video" in data:
                return "jsonl"
            first_value = next(iter(data.values()), None)
            if isinstance(first_value, dict) and {"start", "end", "text"} <= first_value.keys():
                return "howto100m"
        return None
    columns = {c.strip().strip('"').lower() for c in head.split("\n", 1)[0].split(",")}
    return "webvid" if {"videoid", "name"} <= columns else None


def wrong_format(path: Path, title: str, expected: str, text: str | None = None) -> PrepareError:
    """The error for a file that is not in the chosen format: what was expected, and what it looks like."""
    guess = guess_format(text) if text is not None else None
    hint = f" (it looks like --format {guess})" if guess else ""
    return PrepareError(f"{path} is not a {title} annotation file: expected {expected}{hint}")


def load_json(path: Path, title: str, expected: str) -> tuple[Any, str]:
    """Parse a JSON annotation file; returns (data, text). Invalid JSON is one line naming what was expected."""
    text = read_text(path, title)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as e:
        raise PrepareError(
            f"{path} is not a {title} annotation file: invalid JSON at line {e.lineno} ({e.msg}); expected {expected}"
            + (f" (it looks like --format {g})" if (g := guess_format(text)) else "")
        ) from None


def clean_caption(text: Any) -> str | None:
    """A caption with whitespace collapsed, or None when it is not text or empty."""
    if not isinstance(text, str):
        return None
    out = _SPACE.sub(" ", text).strip()
    return out or None


def number(value: Any) -> float | None:
    """A finite number from a number or a numeric string, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def clean_cues(items: list[Any], issues: Counter, *, duration: float | None = None, drop_empty: bool) -> list[Cue]:
    """``{"start", "end", "text"}`` items -> cues, parsed as JSON ASR transcripts are (malformed ones counted),
    then those with empty text dropped (``cue_empty``, when ``drop_empty``) and, for a known video
    ``duration``, those starting at or after it dropped (``cue_outside_video``) and those running past it cut
    there (``cue_clipped``). Overlapping cues stay: each gives a sample, as with transcript files."""
    try:
        tr = cues_from_segments(items)
    except TranscriptError:
        issues["cue_malformed"] += len(items)
        return []
    issues.update(tr.issues)
    out: list[Cue] = []
    for cue in tr.cues:
        if drop_empty and not cue.text:
            issues["cue_empty"] += 1
            continue
        if duration is not None:
            if cue.start >= duration:
                issues["cue_outside_video"] += 1
                continue
            if cue.end > duration:
                cue = Cue(cue.start, duration, cue.text)
                issues["cue_clipped"] += 1
        out.append(cue)
    return out


def map_split(value: Any, names: dict[str, str]) -> Any:
    """A published split name -> ours (train/val/test); other names pass through (and are checked later)."""
    return names.get(value, value) if isinstance(value, str) else value


class EntryBuilder:
    """Annotated videos -> Entries, or Skips with a reason (malformed record, bad split, duplicate id, no video
    file under --videos). Counts every annotated video as one input seen."""

    def __init__(self, index: VideoIndex) -> None:
        self.index = index
        self.entries: list[Entry] = []
        self.skips: list[Skip] = []
        self.keys = KeyRegistry()
        self.reasons: Counter = Counter()
        self.seen = 0

    def malformed(self, line: int, detail: str, video_id: str | None = None) -> None:
        self.seen += 1
        self.skips.append(Skip(line, "annotation_malformed", detail, video_id))

    def add(
        self,
        line: int,
        video_id: Any,
        split: Any,
        *,
        prefer: Sequence[str] = (),
        caption: str | None = None,
        captions: list[str] | None = None,
        cues: list[Cue] | None = None,
        issues: Counter | None = None,
    ) -> None:
        if not isinstance(video_id, (str, int)) or isinstance(video_id, bool) or str(video_id).strip() == "":
            self.malformed(line, f"video id must be a non-empty string, got {video_id!r}")
            return
        vid = str(video_id).strip()
        self.seen += 1
        if not valid_split(split):
            self.skips.append(Skip(line, "split_invalid", f"split must match [A-Za-z0-9_-]+, got {split!r}", vid))
            return
        key = self.keys.claim(vid)
        if key is None:
            self.skips.append(Skip(line, "duplicate_id", f"id {vid!r} already used", vid))
            return
        path = self.index.find(vid, prefer)
        if path is None:
            detail = f"no video file for id {vid!r} under {self.index.root}"
            self.skips.append(Skip(line, "video_missing", detail, vid))
            return
        raw = {"video": str(path)}
        entry = Entry(line, vid, key, path, None, caption, split, raw, cues, captions, issues or Counter())
        self.entries.append(entry)

    def inputs(self) -> Inputs:
        return Inputs(self.entries, self.skips, self.seen, self.reasons)
