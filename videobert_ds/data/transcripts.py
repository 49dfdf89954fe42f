"""Transcript parsing: SRT, WebVTT and JSON ASR segments -> timed text cues.

Parsers are forgiving in the way real subtitle files need (missing hours, ',' or '.' before
milliseconds, BOMs, Windows line ends, markup in the text) and strict about what they cannot
use: a cue with an unreadable timing line or an end before its start is dropped and counted
as ``cue_malformed``; a file with no usable cue at all raises ``TranscriptError``.
"""

from __future__ import annotations

import html
import json
import math
import re
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Cue",
    "Transcript",
    "TranscriptError",
    "cues_from_segments",
    "decode_text",
    "load_transcript",
    "parse_json_segments",
    "parse_srt",
    "parse_vtt",
]


@dataclass(frozen=True)
class Cue:
    """One timed piece of text, times in seconds from the start of the video."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """Parsed cues (in file order) plus counted problems met while reading them."""

    cues: list[Cue]
    issues: Counter = field(default_factory=Counter)


class TranscriptError(ValueError):
    """A transcript that cannot be used at all; ``reason`` is the report's counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# [HH:]MM:SS(,|.)mmm, hours may have any number of digits, fraction 1-3 digits.
_TS = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]*>")  # <i>, <b>, <v Speaker>, <c.colour>, <00:00:01.000>
_ASS_TAG = re.compile(r"\{\\[^}]*\}")  # {\an8} style overrides some SRT files carry
_SPACE = re.compile(r"\s+")


def decode_text(data: bytes) -> tuple[str, bool]:
    """Bytes -> text; returns (text, used_fallback). UTF-8 (with or without BOM) and BOM-marked
    UTF-16 are taken as is; anything else is read as cp1252, then latin-1 (never fails)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), False
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), True
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def _seconds(h: str | None, m: str, s: str, frac: str | None) -> float | None:
    if int(m) >= 60 or int(s) >= 60:
        return None
    ms = int((frac or "0").ljust(3, "0"))
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + ms / 1000.0


def _parse_timing(line: str) -> tuple[float, float] | None:
    m = _TIMING.match(line)
    if m is None:
        return None
    g = m.groups()
    start, end = _seconds(*g[0:4]), _seconds(*g[4:8])
    if start is None or end is None:
        return None
    return start, end


def _clean(text: str) -> str:
    """Markup-free, whitespace-collapsed, NFC-normalised text (non-ASCII kept)."""
    text = _ASS_TAG.sub("", _TAG.sub("", text))
    text = html.unescape(text)
    return unicodedata.normalize("NFC", _SPACE.sub(" ", text).strip())


def _blocks(text: str) -> list[list[str]]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    out: list[list[str]] = []
    cur: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _cue_from_block(lines: list[str]) -> Cue | None:
    """A block is [identifier], timing, text...; None when there is no valid timing line."""
    for i, line in enumerate(lines[:2]):
        if "-->" in line:
            span = _parse_timing(line)
            if span is None or span[1] < span[0]:
                return None
            return Cue(span[0], span[1], _clean(" ".join(lines[i + 1 :])))
    return None


def _collect(blocks: list[list[str]], fmt: str) -> Transcript:
    cues: list[Cue] = []
    issues: Counter = Counter()
    for block in blocks:
        cue = _cue_from_block(block)
        if cue is None:
            issues["cue_malformed"] += 1
        else:
            cues.append(cue)
    if not cues and issues:
        raise TranscriptError("transcript_malformed", f"no valid {fmt} cue ({issues['cue_malformed']} malformed)")
    return Transcript(cues, issues)


def parse_srt(text: str) -> Transcript:
    """SubRip: blank-line separated blocks of index, ``start --> end``, text lines."""
    return _collect(_blocks(text), "SRT")


def parse_vtt(text: str) -> Transcript:
    """WebVTT: like SRT after a ``WEBVTT`` header; NOTE/STYLE/REGION blocks are skipped."""
    blocks = _blocks(text)
    issues: Counter = Counter()
    if blocks and blocks[0][0].strip().startswith("WEBVTT"):
        header = blocks.pop(0)
        # A header block directly followed by a cue (no blank line) still holds that cue.
        if len(header) > 1 and any("-->" in ln for ln in header[1:]):
            blocks.insert(0, header[1:])
    else:
        issues["vtt_header_missing"] += 1
    blocks = [b for b in blocks if b[0].split(" ", 1)[0].strip() not in ("NOTE", "STYLE", "REGION")]
    out = _collect(blocks, "WebVTT")
    out.issues.update(issues)
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            return None
    else:
        return None
    return v if math.isfinite(v) else None


def parse_json_segments(text: str) -> Transcript:
    """ASR segments: ``[{"start", "end", "text"}]`` or Whisper-style ``{"segments": [...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TranscriptError("transcript_malformed", f"invalid JSON: {e.msg} at line {e.lineno}") from None
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        data = data["segments"]
    if not isinstance(data, list):
        raise TranscriptError("transcript_malformed", "JSON transcript must be a list of {start, end, text}")
    return cues_from_segments(data)


def cues_from_segments(data: list[Any]) -> Transcript:
    """Parsed ``{"start", "end", "text"}`` items -> cues (text cleaned); bad items count as ``cue_malformed``,
    and a list with items but none valid raises ``TranscriptError``."""
    cues: list[Cue] = []
    issues: Counter = Counter()
    for seg in data:
        start = _number(seg.get("start")) if isinstance(seg, dict) else None
        end = _number(seg.get("end")) if isinstance(seg, dict) else None
        text_v = seg.get("text", "") if isinstance(seg, dict) else None
        if start is None or end is None or end < start or not isinstance(text_v, str):
            issues["cue_malformed"] += 1
            continue
        cues.append(Cue(start, end, _clean(text_v)))
    if not cues and issues:
        raise TranscriptError("transcript_malformed", f"no valid JSON segment ({issues['cue_malformed']} malformed)")
    return Transcript(cues, issues)


def _sniff(text: str) -> str:
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith("WEBVTT"):
        return "vtt"
    if head[:1] in ("[", "{"):
        return "json"
    return "srt"


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for messages: a FIFO, a directory, a device, a socket."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def load_transcript(path: str | Path) -> Transcript:
    """Read and parse a transcript file chosen by extension (.srt, .vtt, .json; others sniffed).

    Raises ``TranscriptError`` with reason ``transcript_missing`` / ``transcript_not_a_file`` (a FIFO, device or
    directory) / ``transcript_unreadable`` / ``transcript_malformed``. A non-UTF-8 file is decoded with a
    fallback and counted as ``transcript_non_utf8`` in ``issues``.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # reading a FIFO blocks for ever, /dev/zero never ends
            kind = file_kind(mode)
            raise TranscriptError("transcript_not_a_file", f"transcript is not a regular file ({kind}): {path}")
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise TranscriptError("transcript_missing", f"transcript not found: {path}") from None
    except OSError as e:
        raise TranscriptError("transcript_unreadable", f"cannot read transcript {path}: {e.strerror}") from None
    text, fallback = decode_text(data)
    if "\x00" in text:
        raise TranscriptError("transcript_malformed", f"binary data in transcript {path}")
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("srt", "vtt", "json"):
        kind = _sniff(text)
    parser = {"srt": parse_srt, "vtt": parse_vtt, "json": parse_json_segments}[kind]
    out = parser(text)
    if fallback:
        out.issues["transcript_non_utf8"] += 1
    return out
