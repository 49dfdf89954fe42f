"""YouCook2 ``youcookii_annotations_trainval.json``: ``{"database": {id: {"subset", "duration", "recipe_type",
"annotations": [{"segment": [start, end], "sentence"}]}}}``; one sample per annotated procedure segment.

Subsets training/validation/testing -> splits train/val/test. Videos are usually laid out as
``raw_videos/<subset>/<recipe_type>/<id>.<ext>`` (any layout works: they are found by id). Segments past the stated
duration are dropped or cut there; a segment without a sentence (the test set's segments-only file) gives a
video-only sample (empty text).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from videobert_ds.data.annotations.common import EntryBuilder, clean_cues, load_json, map_split, number, wrong_format
from videobert_ds.data.annotations.finder import VideoIndex
from videobert_ds.data.prepare.entries import Inputs

TITLE = "YouCook2"
FILE = "youcookii_annotations_trainval.json"
EXPECTED = (
    'a JSON object {"database": {id: {"subset", "duration", "recipe_type", '
    '"annotations": [{"segment": [start, end], "sentence"}]}}}'
)
SPLITS = {"training": "train", "validation": "val", "testing": "test"}


def read(path: Path, index: VideoIndex) -> Inputs:
    data, text = load_json(path, TITLE, EXPECTED)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise wrong_format(path, TITLE, EXPECTED, text)
    del text
    out = EntryBuilder(index)
    for n, (vid, rec) in enumerate(data["database"].items(), start=1):
        if not isinstance(rec, dict) or not isinstance(rec.get("annotations", []), list):
            out.malformed(n, "a video's record must be an object with an 'annotations' list", vid)
            continue
        issues: Counter = Counter()
        items = []
        for ann in rec.get("annotations", []):
            seg = ann.get("segment") if isinstance(ann, dict) else None
            if not (isinstance(seg, list) and len(seg) == 2):
                issues["cue_malformed"] += 1
                continue
            sentence = ann.get("sentence", "")
            items.append({"start": seg[0], "end": seg[1], "text": sentence if isinstance(sentence, str) else None})
        duration = number(rec.get("duration"))
        cues = clean_cues(items, issues, duration=duration if duration and duration > 0 else None, drop_empty=False)
        subset = rec.get("subset")
        prefer = [str(p) for p in (subset, rec.get("recipe_type")) if isinstance(p, (str, int))]
        out.add(n, vid, map_split(subset, SPLITS), prefer=prefer, cues=cues, issues=issues)
    return out.inputs()
