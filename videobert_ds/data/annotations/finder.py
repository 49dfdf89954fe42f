"""Find videos by id: one walk over the videos folder builds id (the file name without its extension) -> path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from videobert_ds.data.prepare.options import PrepareError

VIDEO_EXTENSIONS = frozenset({"mp4", "webm", "mkv", "avi", "mov", "m4v", "flv"})


class VideoIndex:
    """The videos under ``root`` by id, built on the first lookup (after the annotation file parsed, so a wrong
    file fails before a long walk). The walk is sorted, so every MPI rank resolves an id to the same file;
    linked folders are followed once each (a link loop is not walked twice)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._paths: dict[str, list[Path]] | None = None
        self.unreadable_dirs = 0

    def _walk(self) -> dict[str, list[Path]]:
        if not self.root.is_dir():
            raise PrepareError(f"videos folder not found: {self.root}")
        paths: dict[str, list[Path]] = {}
        seen_dirs: set[tuple[int, int]] = set()

        def unreadable(_: OSError) -> None:
            self.unreadable_dirs += 1

        for top, dirs, files in os.walk(self.root, onerror=unreadable, followlinks=True):
            try:
                st = os.stat(top)
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                stem, dot, ext = name.rpartition(".")
                if dot and stem and not name.startswith(".") and ext.lower() in VIDEO_EXTENSIONS:
                    paths.setdefault(stem, []).append(Path(top) / name)
        return paths

    @property
    def paths(self) -> dict[str, list[Path]]:
        if self._paths is None:
            self._paths = self._walk()
        return self._paths

    def find(self, video_id: str, prefer: Sequence[str] = ()) -> Path | None:
        """The file of ``video_id``, or None. When several files have that id, the first (in sorted walk order)
        whose folders below the root include every name in ``prefer`` (e.g. a YouCook2 subset and recipe type,
        a WebVid page_dir), else the first."""
        found = self.paths.get(video_id)
        if not found:
            return None
        want = [p for p in prefer if p]
        if len(found) > 1 and want:
            for path in found:
                parts = path.parent.relative_to(self.root).parts
                if all(p in parts for p in want):
                    return path
        return found[0]

    def info(self) -> dict[str, int]:
        """Counts for report.json: video files found, ids with more than one file, folders that could not be read."""
        return {
            "videos_found": sum(len(v) for v in self.paths.values()),
            "video_ids_with_several_files": sum(1 for v in self.paths.values() if len(v) > 1),
            "video_dirs_unreadable": self.unreadable_dirs,
        }
