"""MSR-VTT 1k-A's published test split, `MSRVTT_JSFUSION_test.csv` (JSFusion, Yu et al. 2018; used by CLIP4Clip,
Frozen in Time, ...): a header `key,vid_key,video_id,sentence` and one row per test video, e.g.
`ret0,msr9770,video9770,a person is connecting something to system`. Only video_id and sentence are used."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("key", "vid_key", "video_id", "sentence")


class SplitFileError(ValueError):
    """A split file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class SplitRow:
    video_id: str
    sentence: str


@dataclass
class SplitFile:
    rows: list[SplitRow]  # one per video, in file order
    duplicates: int  # rows naming a video already listed (dropped: 1k-A is one sentence per video)
    empty: int  # rows without a video id or sentence (dropped)


def read_split_file(path: Path) -> SplitFile:
    """The csv's (video_id, sentence) rows; SplitFileError (one line) for a missing file or missing columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SplitFileError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SplitFileError(f"cannot read {path}: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in ("video_id", "sentence") if c not in header]
    if missing:
        raise SplitFileError(
            f"{path} is not an MSR-VTT split csv: no {', '.join(missing)} column "
            f"(expected a header {','.join(COLUMNS)}, got {','.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    rows: list[SplitRow] = []
    seen: set[str] = set()
    duplicates = empty = 0
    for rec in reader:
        vid, sentence = (rec.get("video_id") or "").strip(), " ".join((rec.get("sentence") or "").split())
        if not vid or not sentence:
            empty += 1
        elif vid in seen:
            duplicates += 1
        else:
            seen.add(vid)
            rows.append(SplitRow(vid, sentence))
    if not rows:
        raise SplitFileError(f"{path} lists no video with a sentence")
    return SplitFile(rows, duplicates, empty)
