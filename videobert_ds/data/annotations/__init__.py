"""Published annotation files -> the Entries a JSONL manifest gives, so ``videobert-prepare --format NAME
--annotations FILE --videos DIR`` cuts them like any manifest. Videos are found by id anywhere under DIR.

    format     file                                               splits
    howto100m  caption.json                                       all train
    youcook2   youcookii_annotations_trainval.json                training/validation/testing -> train/val/test
    webvid     results_*.csv (videoid, contentUrl, duration,      from the file name: val, test, else train
               page_dir, name)
    msrvtt     train_val_videodatainfo.json, test_videodatainfo   train/validate/test -> train/val/test

One module a format (``read(path, VideoIndex) -> Inputs``), the video finder (finder.py) and what they share
(common.py). An annotated video with no file under DIR is skipped as ``video_missing`` (named in report.json); a
file that is not in the chosen format is a one-line PrepareError naming what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from videobert_ds.data.annotations import howto100m, msrvtt, webvid, youcook2
from videobert_ds.data.annotations.common import guess_format
from videobert_ds.data.annotations.finder import VIDEO_EXTENSIONS, VideoIndex
from videobert_ds.data.prepare.entries import Inputs
from videobert_ds.data.prepare.options import PrepareError

FORMATS: dict[str, ModuleType] = {"howto100m": howto100m, "youcook2": youcook2, "webvid": webvid, "msrvtt": msrvtt}
Reader = Callable[[Path, VideoIndex], Inputs]

__all__ = ["FORMATS", "VIDEO_EXTENSIONS", "AnnotationSource", "VideoIndex", "guess_format", "read_annotations"]


def read_annotations(fmt: str, annotations: str | Path, videos: str | Path) -> Inputs:
    """Parse ``annotations`` in format ``fmt`` and find its videos under ``videos``; raises PrepareError."""
    return AnnotationSource(fmt, annotations, videos).read()


class AnnotationSource:
    """An InputSource (see data/prepare/entries.py) for one published annotation file and its videos folder."""

    def __init__(self, fmt: str, annotations: str | Path, videos: str | Path) -> None:
        self.format, self.annotations, self.videos = fmt, Path(annotations), Path(videos)

    def check(self) -> None:
        if self.format not in FORMATS:
            raise PrepareError(f"unknown annotation format {self.format!r} (choose from {', '.join(FORMATS)})")
        if not self.annotations.is_file():
            raise PrepareError(f"annotations not found: {self.annotations}")
        if not self.videos.is_dir():
            raise PrepareError(f"videos folder not found: {self.videos}")

    def read(self) -> Inputs:
        self.check()
        index = VideoIndex(self.videos)
        reader: Reader = FORMATS[self.format].read
        inputs = reader(self.annotations, index)
        inputs.info = {
            "format": self.format,
            "annotations": str(self.annotations),
            "videos": str(self.videos),
            **index.info(),
        }
        return inputs
