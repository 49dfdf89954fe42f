"""WebDataset shard writing: one split per shard, temp names while open, a DALI index per
shard, and the publish step that renames shards to ``shard-NNNNNN`` and writes manifest.json.

A shard is only ever visible under its final name once its tar and its index are complete;
``manifest.json`` is written last, so its presence marks a complete shard directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wds2idx import IndexCreator  # ships with the DALI wheel

from videobert_ds.core.atomic import atomic_path

__all__ = [
    "FAILED_REPORT",
    "MANIFEST",
    "REPORT",
    "ShardRecord",
    "SplitShardWriter",
    "apply_publish",
    "is_complete",
    "plan_publish",
    "publish",
    "remove_published",
    "shard_keys",
    "write_json_atomic",
]

MANIFEST = "manifest.json"
REPORT = "report.json"
FAILED_REPORT = "report.failed.json"  # the report of a run that wrote no sample (and published nothing)
_SHARD_RE = re.compile(r"^shard-\d{6}\.(tar|idx)$")


@dataclass(frozen=True)
class ShardRecord:
    """A finished temp shard: where it is, its split, sample count and its place in the order."""

    tar: str
    idx: str
    split: str
    count: int
    order: tuple[int, int]  # (rank, sequence on that rank): a deterministic final order


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (UTF-8, non-ASCII text kept as is: ids, cues and labels) whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_index(tar: Path, idx: Path) -> None:
    """DALI's wds2idx index, whole or not at all."""
    with atomic_path(idx) as tmp, IndexCreator(str(tar), str(tmp), verbose=False) as creator:
        creator.create_index()


class SplitShardWriter:
    """Writes samples into per-split temp shards of at most ``samples_per_shard`` samples.

    Temp shards live in ``tmp_dir`` named ``r{rank}-{seq}.tar`` so concurrent ranks never collide; a shard is
    written as ``.tar.part`` and renamed to ``.tar`` once it and its index are complete, so a ``.tar`` in
    ``tmp_dir`` is always whole. ``first_seq`` continues a resumed rank's numbering. ``close`` finishes the open
    ones and returns every finished shard.
    """

    def __init__(self, tmp_dir: Path, samples_per_shard: int, rank: int = 0, first_seq: int = 0) -> None:
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        self.tmp_dir = Path(tmp_dir)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.rank = rank
        self._seq = first_seq
        self._open: dict[str, tuple[Any, Path, int, int]] = {}  # split -> writer, path, count, seq
        self._open_keys: dict[str, list[str]] = {}  # split -> keys in its open shard
        self.finished: list[ShardRecord] = []

    @property
    def next_seq(self) -> int:
        return self._seq

    def open_keys(self) -> set[str]:
        """The keys of the samples in shards not yet finished (lost if the process dies now)."""
        return {k for keys in self._open_keys.values() for k in keys}

    def write(self, split: str, key: str, files: dict[str, bytes]) -> None:
        """Add one sample (``files`` maps extension -> bytes) to the split's open shard."""
        if split not in self._open:
            import webdataset as wds  # deferred: it imports torch, which CLI errors need not wait for

            seq = self._seq
            self._seq += 1
            path = self.tmp_dir / f"r{self.rank:05d}-{seq:06d}.tar.part"
            self._open[split] = (wds.TarWriter(str(path), mtime=0.0), path, 0, seq)
            self._open_keys[split] = []
        writer, path, count, seq = self._open[split]
        writer.write({"__key__": key, **files})
        count += 1
        self._open[split] = (writer, path, count, seq)
        self._open_keys[split].append(key)
        if count >= self.samples_per_shard:
            self._finish(split)

    def _finish(self, split: str) -> None:
        writer, part, count, seq = self._open.pop(split)
        self._open_keys.pop(split, None)
        writer.close()
        tar = part.with_suffix("")  # r.....-......tar
        idx = tar.with_suffix(".idx")
        _write_index(part, idx)
        os.replace(part, tar)  # last: a .tar is whole and has its index
        self.finished.append(ShardRecord(str(tar), str(idx), split, count, (self.rank, seq)))

    def close(self) -> list[ShardRecord]:
        for split in sorted(self._open):
            self._finish(split)
        return list(self.finished)

    def abort(self) -> None:
        """Close and delete everything this writer made (used when a run fails)."""
        self.discard_open()
        for rec in self.finished:
            Path(rec.tar).unlink(missing_ok=True)
            Path(rec.idx).unlink(missing_ok=True)
        self.finished.clear()

    def discard_open(self) -> None:
        """Close and delete the shards not yet finished; the finished ones stay."""
        for writer, path, _, _ in self._open.values():
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too: delete anyway
                writer.close()
            path.unlink(missing_ok=True)
        self._open.clear()
        self._open_keys.clear()


def shard_keys(idx: Path) -> list[str]:
    """The sample keys of a shard, read from its DALI index (``v1.2 N`` then one line per sample:
    ``ext offset size name`` for each of its files; the key is a name up to its first dot)."""
    keys = []
    for line in Path(idx).read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4:
            keys.append(fields[3].split(".", 1)[0])
    return keys


def is_complete(out: Path) -> bool:
    """A shard directory is complete once its manifest.json exists."""
    return (Path(out) / MANIFEST).is_file()


def remove_published(out: Path) -> None:
    """Remove a previous run's published files (manifest first, so the dir reads incomplete), and the report of a
    previous run that published nothing."""
    out = Path(out)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / REPORT).unlink(missing_ok=True)
    (out / FAILED_REPORT).unlink(missing_ok=True)
    for p in out.iterdir():
        if _SHARD_RE.match(p.name):
            p.unlink()


def plan_publish(
    records: list[ShardRecord], meta: dict[str, Any], old: dict[str, Any] | None = None
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The renames that publish temp shards as ``shard-NNNNNN`` (ordered by split, then rank and sequence) and the
    manifest.json to write after them. ``meta`` (codec, fps, size, ...) is merged in. ``old``: the manifest of
    the corpus being appended to: the new shards are numbered after its shards, which stay listed first."""
    ordered = sorted(records, key=lambda r: (r.split, r.order))
    shards = list(old["shards"]) if old else []
    first = len(shards)
    renames: list[tuple[str, str]] = []
    for n, rec in enumerate(ordered, start=first):
        name = f"shard-{n:06d}"
        renames += [(rec.idx, f"{name}.idx"), (rec.tar, f"{name}.tar")]  # the index first: a tar always has one
        shards.append({"file": f"{name}.tar", "idx": f"{name}.idx", "split": rec.split, "num_samples": rec.count})
    splits: dict[str, int] = {}
    for sh in shards:
        splits[sh["split"]] = splits.get(sh["split"], 0) + sh["num_samples"]
    manifest = {**meta, "total": sum(splits.values()), "splits": dict(sorted(splits.items())), "shards": shards}
    return renames, manifest


def apply_publish(out: Path, renames: list[tuple[str, str]], report: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Do the renames of ``plan_publish`` into ``out``, then write report.json and manifest.json (last: it marks
    the directory complete). Idempotent: a rename already done (its source gone, its target there) is skipped, so a
    publish cut short by a kill is finished by doing it again."""
    out = Path(out)
    for src, name in renames:
        dst = out / name
        if Path(src).exists():
            os.replace(src, dst)
        elif not dst.exists():
            raise FileNotFoundError(errno.ENOENT, "shard to publish is missing", src)
    write_json_atomic(out / REPORT, report)
    write_json_atomic(out / MANIFEST, manifest)


def publish(out: Path, records: list[ShardRecord], meta: dict[str, Any]) -> dict[str, Any]:
    """Rename temp shards to ``shard-NNNNNN`` and write manifest.json (no report); returns the manifest."""
    renames, manifest = plan_publish(records, meta)
    out = Path(out)
    for src, name in renames:
        os.replace(src, out / name)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
