"""WebVid results CSV (``results_2M_train.csv``, ``results_10M_val.csv``, ...): columns ``videoid, contentUrl,
duration, page_dir, name``; one caption (``name``) per video, quoted when it holds commas or quotes.

Each video gives one sample of its start (up to --max-clip-seconds) with the caption. The split comes from the file
name: ``val`` or ``test`` in it, else ``train``. Videos are ``<page_dir>/<videoid>.<ext>`` or flat (found by id).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

from videobert_ds.data.annotations.common import EntryBuilder, clean_caption, read_text, wrong_format
from videobert_ds.data.annotations.finder import VideoIndex
from videobert_ds.data.prepare.entries import Inputs
from videobert_ds.data.prepare.options import PrepareError

TITLE = "WebVid"
FILE = "results_*.csv"
EXPECTED = "a CSV with a header row holding the columns videoid and name (and page_dir)"


def split_of(path: Path) -> str:
    """The split a WebVid CSV's name says: ``val`` or ``test`` in it, else ``train``."""
    words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    return "val" if words & {"val", "valid", "validation"} else "test" if "test" in words else "train"


def read(path: Path, index: VideoIndex) -> Inputs:
    text = read_text(path, TITLE)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error:
        raise wrong_format(path, TITLE, EXPECTED, text) from None
    if "videoid" not in header or "name" not in header:
        raise wrong_format(path, TITLE, EXPECTED, text)
    col = {name: i for i, name in reversed(list(enumerate(header)))}
    split = split_of(path)
    out = EntryBuilder(index)
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                out.malformed(line, f"{len(row)} fields, the header has {len(header)}")
                continue
            issues: Counter = Counter()
            caption = clean_caption(row[col["name"]])
            if caption is None:
                issues["caption_empty"] += 1
            page_dir = row[col["page_dir"]].strip() if "page_dir" in col else ""
            out.add(line, row[col["videoid"]], split, prefer=[page_dir], caption=caption, issues=issues)
    except csv.Error as e:
        where = f"bad CSV at line {reader.line_num} ({e})"
        raise PrepareError(f"{path} is not a {TITLE} annotation file: {where}") from None
    return out.inputs()
