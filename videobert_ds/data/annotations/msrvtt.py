"""MSR-VTT ``train_val_videodatainfo.json`` / ``test_videodatainfo.json``: ``{"videos": [{"video_id", "split"}],
"sentences": [{"video_id", "caption"}]}``, 20 captions per video.

Every caption is kept with its video: each gives one sample of the whole clip (up to --max-clip-seconds), keyed
``<video_id>_<caption index>``; the clip is cut and encoded once. Splits train/validate/test -> train/val/test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from videobert_ds.data.annotations.common import EntryBuilder, clean_caption, load_json, map_split, wrong_format
from videobert_ds.data.annotations.finder import VideoIndex
from videobert_ds.data.prepare.entries import Inputs

TITLE = "MSR-VTT"
FILE = "train_val_videodatainfo.json, test_videodatainfo.json"
EXPECTED = 'a JSON object {"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}'
SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def read(path: Path, index: VideoIndex) -> Inputs:
    data, text = load_json(path, TITLE, EXPECTED)
    if not (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("videos", "sentences"))):
        raise wrong_format(path, TITLE, EXPECTED, text)
    del text
    captions: dict[str, list[str]] = {}
    empty: Counter = Counter()
    unknown = 0
    known = {str(v["video_id"]) for v in data["videos"] if isinstance(v, dict) and "video_id" in v}
    for s in data["sentences"]:
        vid = str(s.get("video_id")) if isinstance(s, dict) else None
        if vid is None or vid not in known:
            unknown += 1
            continue
        cap = clean_caption(s.get("caption"))
        if cap is None:
            empty[vid] += 1
        else:
            captions.setdefault(vid, []).append(cap)
    out = EntryBuilder(index)
    if unknown:  # not tied to one input: a caption of a video the file does not list
        out.reasons["caption_unknown_video"] += unknown
    for n, rec in enumerate(data["videos"], start=1):
        if not isinstance(rec, dict):
            out.malformed(n, "a video must be an object with 'video_id' and 'split'")
            continue
        vid = rec.get("video_id")
        issues: Counter = Counter()
        if empty[str(vid)]:
            issues["caption_empty"] += empty[str(vid)]
        caps = captions.get(str(vid))
        if not caps:
            issues["captions_missing"] += 1
        out.add(n, vid, map_split(rec.get("split"), SPLITS), captions=caps, issues=issues)
    return out.inputs()
