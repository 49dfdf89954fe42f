"""Pre-extracted clip features as the visual input: a features dir instead of decoding the shards' video.

Many corpora ship per-video feature arrays (HowTo100M's S3D features: one .npy per video, one 1024-d row per
second). A features dir holds one `<video_id>.npy` or `<video_id>.npz` per video, each a (T, D) array whose
row i covers [i / rate, (i + 1) / rate) seconds of the source video, and optionally a `features.json`:

    {"rate": 1.0, "key": "features"}    # rows per second; for .npz files, the array's name (default: the only one)

`rate` may also come from the config (`encoder.rate`), which wins. The shards still say which samples exist
and when: a sample's json `video_id`, `start` and `end` (seconds in the source video) pick its rows. The
sample is cut into clips of `clip_seconds` (default: one row, 1 / rate) from `start`, as many as fit before
`end` (and at most `max_clips`); a clip's feature is the mean of the rows whose centre lies inside it, or the
row under its midpoint when none does (features sparser than clips). A clip reaching past the array's end is
dropped. A sample whose video has no file is skipped and counted (`FeaturesDir.stats`).

`clip_features(meta)` is the per-sample call (build_vocab and the tokenize stage both use it);
`iter_clip_features` walks a local shard dir's samples of one split for one rank, reading only the shards'
json members.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videobert_ds.visual.vocab import FEATURES_ENCODER

FEATURES_JSON = "features.json"
SUFFIXES = (".npy", ".npz")


class FeaturesDir:
    """A folder of per-video feature arrays, cut into clip features by the samples' times.

    `rate`: rows per second (0 = features.json's); `clip_seconds`: clip length (0 = one row); a bad dir or
    rate is a one-line ValueError / FileNotFoundError. `stats` counts samples seen, those whose video had no
    file (`missing`, first ids in `missing_ids`), clips made and clips dropped past an array's end."""

    def __init__(self, path: str | os.PathLike, *, rate: float = 0.0, clip_seconds: float = 0.0, key: str = "") -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"features dir not found: {self.path}")
        meta: dict[str, Any] = {}
        if (self.path / FEATURES_JSON).is_file():
            try:
                meta = json.loads((self.path / FEATURES_JSON).read_text())
            except ValueError as err:
                raise ValueError(f"{self.path / FEATURES_JSON} is not JSON: {err}") from None
            if not isinstance(meta, dict):
                raise ValueError(f"{self.path / FEATURES_JSON} must be a JSON object")
        self.rate = float(rate or meta.get("rate") or 0)
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(
                f"features dir {self.path}: no feature rate (rows per second): set encoder.rate or "
                f'write {{"rate": R}} to {self.path / FEATURES_JSON}'
            )
        self.clip_seconds = float(clip_seconds) or 1.0 / self.rate
        if not (math.isfinite(self.clip_seconds) and self.clip_seconds > 0):
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        self.key = key or str(meta.get("key") or "")
        self.feature_dim = self._probe_dim()
        self.stats: dict[str, Any] = {"samples": 0, "missing": 0, "missing_ids": [], "clips": 0, "dropped_clips": 0}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # a video's samples usually come together

    def _probe_dim(self) -> int:
        # The first array found, not the first by name: a corpus' dir may hold a million files.
        with os.scandir(self.path) as entries:
            first = next((Path(e.path) for e in entries if Path(e.name).suffix in SUFFIXES and e.is_file()), None)
        if first is None:
            raise FileNotFoundError(f"features dir {self.path} holds no .npy or .npz file")
        return int(self._read(first).shape[1])

    def find(self, video_id: str) -> Path | None:
        """The video's feature file, or None (also for an id that is not a plain file name)."""
        if not video_id or "/" in video_id or os.sep in video_id or video_id in (".", ".."):
            return None
        for suffix in SUFFIXES:
            path = self.path / f"{video_id}{suffix}"
            if path.is_file():
                return path
        return None

    def _read(self, path: Path) -> np.ndarray:
        try:
            if path.suffix == ".npy":
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.keys())
                    if self.key:
                        if self.key not in names:
                            raise ValueError(f"no array {self.key!r} (it holds {', '.join(names)})")
                        arr = z[self.key]
                    elif len(names) == 1:
                        arr = z[names[0]]
                    else:
                        raise ValueError(f"{len(names)} arrays ({', '.join(names)}): set 'key' in {FEATURES_JSON}")
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read features file {path}: {str(err).splitlines()[0]}") from None
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise ValueError(f"features file {path} holds a {arr.shape} array; want (rows, feature_dim)")
        return arr

    def load(self, video_id: str) -> np.ndarray | None:
        """The video's (T, D) rows (memory-mapped for .npy), or None when it has no file."""
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        path = self.find(video_id)
        if path is None:
            return None
        arr = self._read(path)
        if arr.shape[1] != self.feature_dim:
            raise ValueError(f"features file {path} has {arr.shape[1]}-d rows, the dir's others {self.feature_dim}-d")
        self._cache[video_id] = arr
        if len(self._cache) > 8:
            self._cache.popitem(last=False)
        return arr

    def frames_per_clip(self, fps: float) -> int:
        """A clip's length in the shards' frames (what a vocabulary records as frames_per_clip)."""
        return max(1, round(self.clip_seconds * float(fps)))

    def identity(self, fps: float) -> dict[str, Any]:
        """The vocabulary's encoder identity for clips of this dir at the shards' `fps`: tokenize checks its
        features dir against it. The dir is named by its folder name, so a copy elsewhere still matches."""
        return {
            "name": FEATURES_ENCODER,
            "source": self.path.resolve().name,
            "rate": self.rate,
            "clip_seconds": self.clip_seconds,
            "feature_dim": self.feature_dim,
            "frames_per_clip": self.frames_per_clip(fps),
        }

    def clip_features(self, meta: dict[str, Any], max_clips: int = 0) -> torch.Tensor | None:
        """float32 (n_clips, D) for one sample json (`video_id`, `start`, `end`), or None when its video has no
        features file (counted). `max_clips` > 0 caps the clips, as `data.num_frames` caps decoded frames."""
        self.stats["samples"] += 1
        vid = str(meta.get("video_id", ""))
        arr = self.load(vid)
        if arr is None:
            self.stats["missing"] += 1
            if len(self.stats["missing_ids"]) < 5:
                self.stats["missing_ids"].append(vid)
            return None
        start, end = float(meta["start"]), float(meta["end"])
        n = max(0, math.floor((end - start) / self.clip_seconds + 1e-6))
        if max_clips > 0:
            n = min(n, max_clips)
        a = start + np.arange(n) * self.clip_seconds  # clip starts, seconds
        r, eps = self.rate, 1e-6
        lo = np.ceil(a * r - 0.5 - eps).astype(np.int64)  # first row whose centre (i + 0.5) / r is >= a
        hi = np.ceil((a + self.clip_seconds) * r - 0.5 - eps).astype(np.int64)  # first row past the clip
        empty = hi <= lo  # no row centre inside: the row under the midpoint
        mid = np.maximum(np.floor((a + self.clip_seconds / 2) * r).astype(np.int64), 0)
        lo, hi = np.where(empty, mid, np.maximum(lo, 0)), np.where(empty, mid + 1, hi)
        keep = hi <= arr.shape[0]
        self.stats["dropped_clips"] += int((~keep).sum())
        lo, hi = lo[keep], hi[keep]
        self.stats["clips"] += int(lo.size)
        if lo.size == 0:
            return torch.zeros(0, self.feature_dim)
        first = int(lo.min())
        rows = np.asarray(arr[first : int(hi.max())], dtype=np.float64)  # only the rows the sample needs
        cs = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0)])
        lo, hi = lo - first, hi - first
        out = (cs[hi] - cs[lo]) / (hi - lo)[:, None]
        return torch.from_numpy(out.astype(np.float32))


def shard_samples(shard_dir: str | os.PathLike, split: str) -> Iterator[dict[str, Any]]:
    """Every sample json of a local shard dir's split (with "__key__"), in manifest order; the video members
    are seeked past, never read."""
    from videobert_ds.data.loader import read_shard_manifest, split_shards
    from videobert_ds.data.text import tar_json_members

    manifest = read_shard_manifest(shard_dir)
    for shard in split_shards(shard_dir, manifest, split):
        with open(shard.path, "rb", buffering=0) as f:
            for name, data in tar_json_members(f):
                meta = json.loads(data)
                meta["__key__"] = name[: -len(".json")]
                yield meta


def iter_clip_features(
    shard_dir: str | os.PathLike,
    split: str,
    features: FeaturesDir,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_clips: int = 0,
) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """(sample json, its clip features (n, D)) for this rank's samples of `split` (sample i of the split goes
    to rank i % world_size); samples without a features file are skipped and counted in `features.stats`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    for i, meta in enumerate(shard_samples(shard_dir, split)):
        if i % world_size != rank:
            continue
        feats = features.clip_features(meta, max_clips)
        if feats is not None:
            yield meta, feats
