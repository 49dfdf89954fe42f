"""Shards from anywhere: a shard location -> its manifest.json and a split's shards (local paths or URLs), and the
samples of one shard read as a stream, retried on a dropped connection and, with `on_error="skip"`, surviving a
bad shard or sample.

Locations (core/remote.py says how each is recognised and opened): a local shard folder, an http(s):// URL of a
folder (manifest.json beside the tars), a brace pattern of tars (`http://h/c/shard-{000000..000009}.tar`), a
`pipe:` command (`pipe:cat /d/shard-{000000..000003}.tar`), or an s3:// / gs:// (any fsspec) URL of a folder when
its package is installed. A pattern or pipe: location reads its manifest.json from the same place with the tar
name replaced (sample counts come from there, so the plan needs no pass over the tars) and keeps the shards it
names, each of which the manifest must list.

A read that fails (a dropped connection, a truncated or garbled tar) re-opens the shard and skips the samples
already handed on, so the position is exact; remote shards get `retries` such re-opens with exponential backoff,
local files none (a local file that fails once fails again). What then happens is the policy's `on_error`:
"raise" (one-line RuntimeError) or "skip" (the rest of the shard is counted as skipped samples, reason "read").
"""

from __future__ import annotations

import contextlib
import json
import logging
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videobert_ds.core import remote

log = logging.getLogger(__name__)

# Sample dicts as the webdataset library yields them: "__key__", "__url__", "json" bytes, "webm"/"mp4" bytes.
RawSample = dict[str, Any]
ON_ERROR = ("raise", "skip")
# Why a sample was skipped: its shard could not be read on (after the retries), its json does not parse,
# it has no video member, or its video bytes are not a container the decoders read.
SKIP_REASONS = ("read", "json", "video")


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard of a split: a local path or a URL, with its sample count from manifest.json."""

    path: str | Path  # a Path from callers that build local lists themselves
    num_samples: int


def read_manifest(location: str | Path) -> dict[str, Any]:
    """manifest.json of a shard location, with a one-line error when it is missing or unreadable."""
    loc = str(location)
    if remote.is_local(loc) and not remote.names_list(loc):
        folder = Path(remote.local_path(loc))
        if not folder.is_dir():
            raise FileNotFoundError(f"shard directory {loc} does not exist")
        path = folder / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {loc} a directory made by videobert-prepare?")
        return json.loads(path.read_text())
    problem = remote.location_problem(loc)
    if problem:
        raise ValueError(problem)
    url = remote.manifest_url(loc)
    try:
        manifest = json.loads(remote.read_url(url))
    except json.JSONDecodeError as err:
        raise ValueError(f"{url} is not a manifest.json ({err.msg})") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} not found: is {loc} a shard location made by videobert-prepare?") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{url} lists no shards")
    return manifest


def named_tars(location: str) -> list[str] | None:
    """The locations of the tars a pattern / pipe: location names, brace-expanded; None for a shard folder."""
    if not remote.names_list(location):
        return None
    from braceexpand import braceexpand  # a dependency of webdataset, which expands shard patterns with it

    return list(braceexpand(location))


def split_shards(location: str | Path, manifest: dict[str, Any], split: str) -> list[ShardInfo]:
    """The split's shards in manifest order (for a pattern: those it names, in its order); ValueError for an
    unknown or empty split, or a pattern naming a tar the manifest does not list."""
    loc = str(location)
    listed: dict[str, dict[str, Any]] = {}
    splits: set[str] = set()
    for entry in manifest.get("shards", []):
        splits.add(entry["split"])
        listed[entry.get("file") or entry.get("name") or entry["path"]] = entry
    named = named_tars(loc)
    if named is None:
        chosen = [(remote.join(loc, name), e) for name, e in listed.items()]
    else:
        chosen = []
        for url in named:
            name = remote.tar_name(url)
            if name not in listed:
                raise ValueError(f"{loc}: {name} is not listed in its manifest.json ({remote.manifest_url(loc)})")
            chosen.append((remote.local_path(url), listed[name]))
        splits = {e["split"] for _, e in chosen}
    shards = [ShardInfo(url, int(e["num_samples"])) for url, e in chosen if e["split"] == split]
    if split not in splits:
        raise ValueError(f"split {split!r} is not in {loc} (splits: {', '.join(sorted(splits)) or 'none'})")
    if sum(s.num_samples for s in shards) == 0:
        raise ValueError(f"split {split!r} of {loc} has no samples")
    return shards


def open_tar(path: str) -> Any:
    """A binary stream over one tar shard (path or URL); the caller closes it."""
    return remote.open_url(path)


# ---------------------------------------------------------------------------------------------
# Reading samples: retries, skips, counts
# ---------------------------------------------------------------------------------------------


class SkippedTooMany(RuntimeError):
    """More samples were skipped than data.max_skip_share allows; the message is one line."""


@dataclass
class SkipCounts:
    """Samples one rank's reader has read (``seen``, skipped ones included) and skipped, per reason."""

    seen: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def snapshot(self) -> dict[str, int]:
        return {"seen": self.seen, **{f"skipped_{r}": n for r, n in self.skipped.items()}}


@dataclass(frozen=True)
class ReadPolicy:
    """How a shard is read: `retries` re-opens (remote shards) with `backoff_s` doubling, then `on_error`; `check`
    names what is wrong with a sample (a SKIP_REASONS entry and why) or returns None for a good one."""

    on_error: str = "raise"
    retries: int = 3
    backoff_s: float = 1.0
    check: Callable[[RawSample], tuple[str, str] | None] | None = None

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"retries and backoff_s must be >= 0, got {self.retries} and {self.backoff_s}")


class _Short(OSError):
    """A tar that ended (cleanly) before the samples its manifest entry counts."""


def _samples(stream: Any, url: str) -> Iterator[RawSample]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    return group_by_keys({**f, "__url__": url} for f in tar_file_iterator(stream))


def read_shard(
    shard: ShardInfo, policy: ReadPolicy = ReadPolicy(), counts: SkipCounts | None = None, opened: Any = None
) -> Iterator[RawSample]:
    """The good samples of one shard in tar order (see the module docstring for retries and on_error). `opened`: a
    stream of the shard opened ahead (read_ahead), used for the first attempt and closed in any case."""
    counts = counts if counts is not None else SkipCounts()
    path = str(shard.path)
    retries = 0 if remote.is_local(path) else policy.retries
    position = 0  # samples of this shard read so far (handed on or skipped): a re-open skips this many
    failures = 0
    while True:
        stream, opened = opened, None
        try:
            stream = stream or open_tar(path)
            for i, sample in enumerate(_samples(stream, path)):
                if i < position:
                    continue  # handed on before the read failed
                position += 1
                counts.seen += 1
                if position > shard.num_samples:
                    raise RuntimeError(f"{path} holds more samples than manifest.json says ({shard.num_samples})")
                bad = policy.check(sample) if policy.check is not None else None
                if bad is None:
                    yield sample
                elif policy.on_error == "raise":
                    raise RuntimeError(f"sample {sample['__key__']} in {path}: {bad[1]}")
                else:
                    counts.skipped[bad[0]] += 1
                    log.warning("skipped sample %s in %s: %s", sample["__key__"], path, bad[1])
            if position < shard.num_samples:
                raise _Short(f"{path} holds {position} samples but manifest.json says {shard.num_samples}")
            return
        except (OSError, EOFError, tarfile.TarError) as err:
            why = remote.child_failure(stream) or (str(err) if isinstance(err, _Short) else remote.explain(err))
            failures += 1
            if failures <= retries:
                delay = policy.backoff_s * 2 ** (failures - 1)
                log.warning(
                    "reading %s failed at sample %d (%s); retry %d/%d in %.1f s",
                    path, position, why, failures, retries, delay,
                )  # fmt: skip
                time.sleep(delay)
                continue
            tried = f" after {retries} retries" if retries else ""
            if policy.on_error == "raise":
                raise RuntimeError(f"cannot read {path}{tried} at sample {position} ({why})") from None
            rest = max(shard.num_samples - position, 0)
            counts.seen += rest
            counts.skipped["read"] += rest
            log.warning("skipped the last %d samples of %s%s (%s)", rest, path, tried, why)
            return
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # a pipe closed early reports its child's status
                    stream.close()


def opens_ahead(path: str) -> bool:
    """Whether opening a shard early pays: gopen's curl and pipe: children start transferring at once (into the pipe
    buffer), so the next shard's start-up (process, connection, first bytes) overlaps reading the current one."""
    return remote.scheme(path) in remote.GOPEN_SCHEMES


def read_shards_ahead(
    shards: list[ShardInfo], policy: ReadPolicy, counts: SkipCounts | None = None
) -> Iterator[RawSample]:
    """read_shard over `shards` in order, each remote shard's stream opened while the one before is read."""
    ahead: Any = None
    try:
        for i, shard in enumerate(shards):
            stream, ahead = ahead, None
            nxt = shards[i + 1] if i + 1 < len(shards) else None
            for n, sample in enumerate(read_shard(shard, policy, counts, stream)):
                if n == 0 and nxt is not None and opens_ahead(str(nxt.path)):
                    with contextlib.suppress(OSError):  # a failed early open is retried by read_shard
                        ahead = open_tar(str(nxt.path))
                yield sample
    finally:
        if ahead is not None:
            with contextlib.suppress(Exception):
                ahead.close()


def check_skip_share(counts: SkipCounts, max_share: float, floor: int, where: str) -> None:
    """SkippedTooMany (one line) when the skipped samples exceed `max_share` of those seen, counted as at least
    `floor` (one epoch of this rank), so a bad shard early in a run is judged against a whole epoch."""
    total = counts.total
    if total and total > max_share * max(counts.seen, floor):
        reasons = ", ".join(f"{r} {n}" for r, n in counts.skipped.items() if n)
        raise SkippedTooMany(
            f"{where}: skipped {total} of {counts.seen} samples read ({reasons}), more than "
            f"data.max_skip_share={max_share:g}; check the shards (or raise data.max_skip_share)"
        )
