"""HowTo100M ``caption.json``: ``{video_id: {"start": [...], "end": [...], "text": [...]}}``, YouTube ASR cues.

The cues overlap (rolling captions), some are empty, some start after the video ends; all videos are ``train``.
Empty cues are dropped here; those past the video's end are dropped when the video is cut (the file gives no
duration).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from videobert_ds.data.annotations.common import EntryBuilder, clean_cues, load_json, wrong_format
from videobert_ds.data.annotations.finder import VideoIndex
from videobert_ds.data.prepare.entries import Inputs

TITLE = "HowTo100M"
FILE = "caption.json"
EXPECTED = 'a JSON object {video_id: {"start": [...], "end": [...], "text": [...]}}'


def read(path: Path, index: VideoIndex) -> Inputs:
    data, text = load_json(path, TITLE, EXPECTED)
    if not isinstance(data, dict):
        raise wrong_format(path, TITLE, EXPECTED, text)
    first = next(iter(data.values()), None)
    if data and not (isinstance(first, dict) and {"start", "end", "text"} <= first.keys()):
        raise wrong_format(path, TITLE, EXPECTED, text)
    del text
    out = EntryBuilder(index)
    for n, (vid, rec) in enumerate(data.items(), start=1):
        lists = [rec.get(k) for k in ("start", "end", "text")] if isinstance(rec, dict) else []
        if len(lists) != 3 or not all(isinstance(x, list) for x in lists):
            out.malformed(n, "a video's record must hold lists 'start', 'end' and 'text'", vid)
            continue
        starts, ends, texts = lists
        issues: Counter = Counter()
        extra = max(map(len, lists)) - min(map(len, lists))
        if extra:  # lists of different lengths: the unmatched tail cannot be timed
            issues["cue_malformed"] += extra
        items = [{"start": s, "end": e, "text": t} for s, e, t in zip(starts, ends, texts)]
        cues = clean_cues(items, issues, drop_empty=True)
        out.add(n, vid, "train", cues=cues, issues=issues)
    return out.inputs()
