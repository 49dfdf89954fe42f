"""The work dir of a prepare run, ``OUT/.prepare.work/``: what lets a killed run be resumed (``--resume``).

    run.json              the run's identity: options that shape the samples, a fingerprint of its inputs, the
                          number of ranks, fresh or append; a --resume that differs is refused in one line
    r00000.journal        rank 0's journal: one JSON line per commit (after each finished shard, and at the end)
    r00000-000003.tar     a finished shard of rank 0 (+ .idx); ``.tar.part`` while still being written
    publish.json          rank 0's plan once every rank is done: the renames, report.json and manifest.json

A commit names the shards finished since the last one, the inputs now fully done (every sample in a finished shard)
with their per-input report, and the keys already in finished shards of inputs whose other samples are still in an
open shard. A resumed rank deletes every file of its own the journal does not name (shards open when it was killed),
skips the done inputs, redoes the others (writing only their samples not yet in a finished shard), and so ends with
the samples and report of an uninterrupted run. The journal is append-only: a line torn by a kill is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videobert_ds.data.prepare.options import PrepareOptions
from videobert_ds.data.shards import ShardRecord

__all__ = [
    "PUBLISH_FILE",
    "RUN_FILE",
    "WORK_NAME",
    "Journal",
    "RankState",
    "describe_mismatch",
    "inputs_fingerprint",
    "load_rank",
    "run_identity",
]

WORK_NAME = ".prepare.work"
RUN_FILE = "run.json"
PUBLISH_FILE = "publish.json"
# Options that do not change what a run writes: a resume may differ in them.
_FREE_OPTIONS = ("decode_threads", "video_timeout")


def _plain(o: Any) -> Any:
    """JSON for what json does not know: paths made absolute, dataclasses field by field, sets sorted."""
    if isinstance(o, Path):
        return os.path.abspath(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _fields(o)
    if isinstance(o, (set, frozenset)):
        return sorted(map(str, o))
    return str(o)


def _fields(o: Any) -> dict[str, Any]:
    # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, which counts the pairs.
    return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}


def inputs_fingerprint(entries: list[Any], skips: list[Any], seen: int) -> str:
    """A hash of what the input source read (every entry's fields, the skipped inputs, the count seen): the same
    inputs give the same hash, whichever folder the command runs from (paths are made absolute)."""
    h = hashlib.sha256(f"{seen} {len(entries)} {len(skips)}\n".encode())
    for item in (*entries, *skips):  # one at a time: a large annotation file is never one giant string
        h.update(json.dumps(_fields(item), sort_keys=True, default=_plain, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def run_identity(opts: PrepareOptions, fingerprint: str, world: int, mode: str) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (run.json)."""
    options = {k: v for k, v in dataclasses.asdict(opts).items() if k not in _FREE_OPTIONS}
    return {"version": 1, "mode": mode, "options": options, "inputs": fingerprint, "ranks": world}


def describe_mismatch(then: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why ``now`` cannot continue ``then`` (one clause), or None when it can."""
    if then.get("version") != now["version"]:
        return "it was written by another version of videobert-prepare"
    if then.get("mode") != now["mode"]:
        return f"it was started as {'an --append' if then.get('mode') == 'append' else 'a new-corpus'} run"
    changed = [
        f"{k} {then['options'].get(k)!r} then, {v!r} now"
        for k, v in now["options"].items()
        if then.get("options", {}).get(k) != v
    ]
    if changed:
        return "its options differ (" + "; ".join(changed) + ")"
    if then.get("inputs") != now["inputs"]:
        return "its inputs differ (the manifest or annotation file, or the videos and transcripts it lists, changed)"
    if then.get("ranks") != now["ranks"]:
        return (
            f"it was started with {then.get('ranks')} rank(s), this run has {now['ranks']}: resume with the same "
            "number of ranks (each rank resumes its own share of the inputs)"
        )
    return None


@dataclass
class RankState:
    """One rank's progress as its journal records it."""

    shards: list[ShardRecord] = field(default_factory=list)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)  # position in the rank's share -> its report
    partial: dict[int, list[str]] = field(default_factory=dict)  # position -> keys already in finished shards
    next_seq: int = 0
    complete: bool = False
    journal_bytes: int = 0  # the journal's length up to its last whole commit


def journal_path(work: Path, rank: int) -> Path:
    return Path(work) / f"r{rank:05d}.journal"


def _shard_to_json(rec: ShardRecord) -> dict[str, Any]:
    return {"name": Path(rec.tar).stem, "split": rec.split, "count": rec.count, "seq": rec.order[1]}


def _shard_from_json(work: Path, rank: int, d: dict[str, Any]) -> ShardRecord:
    return ShardRecord(str(work / f"{d['name']}.tar"), str(work / f"{d['name']}.idx"), d["split"], d["count"],
                       (rank, d["seq"]))  # fmt: skip


def load_rank(work: Path, rank: int) -> RankState:
    """Replay the rank's journal (none: a fresh state); a last line cut short by a kill is ignored."""
    state = RankState()
    try:
        data = journal_path(work, rank).read_bytes()
    except FileNotFoundError:
        return state
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn by a kill: that commit never happened
        try:
            c = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        state.journal_bytes += len(line)
        state.shards += [_shard_from_json(Path(work), rank, d) for d in c["shards"]]
        state.done.update({int(k): v for k, v in c["done"].items()})
        state.partial = {int(k): v for k, v in c["partial"].items()}
        state.next_seq = c["next_seq"]
        state.complete = c["complete"]
    return state


def remove_unjournaled(work: Path, rank: int, state: RankState) -> int:
    """Delete the rank's files the journal does not name (shards open or finished after its last commit); returns
    how many were removed."""
    keep = {Path(p).name for r in state.shards for p in (r.tar, r.idx)}
    removed = 0
    for p in [*Path(work).glob(f"r{rank:05d}-*"), *Path(work).glob(f".r{rank:05d}-*.tmp")]:  # + index temp files
        if p.name not in keep:
            p.unlink(missing_ok=True)
            removed += 1
    return removed


class Journal:
    """Appends a rank's commits to its journal file, each line flushed to disk before the call returns. ``keep``:
    the bytes of whole commits already there (``RankState.journal_bytes``); a torn line after them is cut off, so
    the commits appended now follow the last whole one."""

    def __init__(self, work: Path, rank: int, keep: int = 0) -> None:
        self.work, self.rank = Path(work), rank
        self._f = open(journal_path(work, rank), "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        self._f.truncate(keep)

    def commit(
        self,
        shards: list[ShardRecord],
        done: dict[int, dict[str, Any]],
        partial: dict[int, list[str]],
        next_seq: int,
        complete: bool,
    ) -> None:
        line = {
            "shards": [_shard_to_json(r) for r in shards],
            "done": {str(k): v for k, v in done.items()},
            "partial": {str(k): v for k, v in partial.items()},
            "next_seq": next_seq,
            "complete": complete,
        }
        self._f.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
