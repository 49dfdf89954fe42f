"""A whole prepare run: check and lock the output dir, run every rank's share, then rank 0 merges the parts, publishes
the shards and writes report.json and manifest.json (last: its presence marks the directory complete)."""

from __future__ import annotations

import errno
import logging
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from videobert_ds.data.decoders.nvdec import gpu_decodable, nvdec_min_size
from videobert_ds.data.prepare.entries import Skip, read_manifest
from videobert_ds.data.prepare.lock import OutputLock, mark_partial, remove_stale_partials
from videobert_ds.data.prepare.options import PROG, PrepareError, PrepareOptions
from videobert_ds.data.prepare.ranks import mpi_comm, run_rank
from videobert_ds.data.shards import (
    FAILED_REPORT,
    REPORT,
    ShardRecord,
    is_complete,
    publish,
    remove_published,
    write_json_atomic,
)
from videobert_ds.data.video_io import CODECS

log = logging.getLogger("videobert_ds.data.prepare")

# Errors writing the output that are the machine's or the user's to fix (full, read-only, no permission, a path
# through a file, a partial dir deleted under the run): one line, not a traceback.
_OUTPUT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.EIO,
    errno.EFBIG,
    errno.ENAMETOOLONG,
    errno.ESTALE,
}


def _cannot_write(out: Path, e: OSError) -> str:
    where = f" ({e.filename})" if e.filename and Path(e.filename) != out else ""
    return f"cannot write to {out}: {e.strerror or e}{where}"


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or one holding a complete corpus unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a directory")
    if is_complete(out) and not overwrite:
        raise PrepareError(f"output {out} already holds a prepared corpus (use --overwrite to replace it)")


def nvdec_warning(opts: PrepareOptions) -> str | None:
    """The warning for clips NVIDIA's GPU decoder cannot decode (too small for the codec), else None."""
    if gpu_decodable(opts.codec, opts.size, opts.size):
        return None
    least = nvdec_min_size(opts.codec)
    needs = f"needs >= {least[0]}x{least[1]}" if least else "codec not supported"
    return (
        f"{PROG}: warning: clips of {opts.size}x{opts.size} {opts.codec} cannot be decoded by NVDEC on a GPU "
        f"({needs}); training on GPUs will decode them on the CPU"
    )


def _start(out: Path, overwrite: bool, opts: PrepareOptions) -> tuple[OutputLock, Path]:
    """Rank 0: check and lock the output dir, remove the partial dirs of runs that are gone, make this run's."""
    _check_out(out, overwrite)  # before touching anything
    lock = OutputLock(out)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as e:
            raise PrepareError(_cannot_write(out, e)) from None
        _check_out(out, overwrite)  # again under the lock: another run may have published meanwhile
        try:
            remove_stale_partials(out)
            tmp = out / f".partial-{uuid.uuid4().hex[:12]}"
            mark_partial(tmp)
        except OSError as e:
            raise PrepareError(_cannot_write(out, e)) from None
    except BaseException:
        lock.release()
        raise
    warning = nvdec_warning(opts)
    if warning:
        log.warning(warning)
    return lock, tmp


def prepare_corpus(
    manifest: Path,
    out: Path,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    comm: Any | None = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Prepare the corpus listed in ``manifest`` into shards under ``out``; returns the report
    (also written to ``out/report.json``). Under MPI every rank calls this and gets the report.

    ``options``: the fields of PrepareOptions by keyword (codec, fps, size, samples_per_shard, window,
    max_clip_seconds, min_clip_seconds, decode_threads); the rest take its defaults.
    ``comm``: an mpi4py communicator, None for a single process, or "auto" (detect a launcher).
    Raises PrepareError (one line for the user) for bad arguments, an existing complete output without
    ``overwrite``, an output dir another run holds (``out/.prepare.lock``), or one that cannot be written (full,
    read-only, no permission, not a directory). A run that writes no sample publishes nothing and returns its
    report (``samples_written`` 0), which it writes to ``out/report.failed.json``.
    """
    opts = PrepareOptions(**options)
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise PrepareError(f"manifest not found: {manifest}")
    if isinstance(comm, str) and comm == "auto":
        comm = mpi_comm()
    rank, world = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    t0 = time.time()

    # Rank 0 decides (output check and lock, partial dir) and everyone follows, so ranks never disagree.
    decision: dict[str, Any] = {}
    lock: OutputLock | None = None
    if rank == 0:
        try:
            lock, tmp = _start(out, overwrite, opts)
            decision = {"tmp": str(tmp)}
        except PrepareError as e:
            decision = {"error": str(e)}
    try:
        if comm is not None:
            decision = comm.bcast(decision, root=0)
        if "error" in decision:
            raise PrepareError(decision["error"])
        return _run(manifest, out, Path(decision["tmp"]), opts, comm, rank, world, progress, t0)
    finally:
        if lock is not None:
            lock.release()


def _run(
    manifest: Path,
    out: Path,
    tmp: Path,
    opts: PrepareOptions,
    comm: Any | None,
    rank: int,
    world: int,
    progress: bool | None,
    t0: float,
) -> dict[str, Any]:
    """Every rank: its share into ``tmp``; rank 0 merges and publishes. Failures travel to rank 0 (no rank hangs in
    gather) as (one line for the user?, message)."""
    line_skips: list[Skip] = []
    seen = 0
    part: dict[str, Any] | None = None
    failure: tuple[bool, str] | None = None
    try:
        try:
            entries, line_skips, seen = read_manifest(manifest)
        except OSError as e:
            raise PrepareError(f"cannot read manifest {manifest}: {e.strerror or e}") from None
        part = run_rank(entries, opts, tmp, rank, world, progress)
    except PrepareError as e:
        failure = (True, str(e))
    except OSError as e:
        failure = (e.errno in _OUTPUT_ERRNOS, _cannot_write(out, e) if e.errno in _OUTPUT_ERRNOS else f"{e!r}")
    except Exception as e:  # noqa: BLE001 - reported to rank 0 so no rank hangs in gather
        failure = (False, f"rank {rank}: {type(e).__name__}: {e}")
    parts = comm.gather((part, failure), root=0) if comm is not None else [(part, failure)]

    outcome: dict[str, Any] = {}
    if rank == 0:
        failures = [f for _, f in parts if f]
        if not failures:
            try:
                outcome = {"report": _finish(out, tmp, parts, line_skips, seen, opts, manifest, world, t0)}
            except OSError as e:
                if e.errno not in _OUTPUT_ERRNOS:
                    raise
                failures = [(True, _cannot_write(out, e))]
        if failures:
            shutil.rmtree(tmp, ignore_errors=True)
            messages = list(dict.fromkeys(m for _, m in failures))  # ranks out of space all say the same
            outcome = {"error": "; ".join(messages), "user": all(u for u, _ in failures)}
    if comm is not None:
        outcome = comm.bcast(outcome, root=0)
    if "error" in outcome:
        if outcome["user"]:
            raise PrepareError(outcome["error"])
        raise RuntimeError(f"prepare failed: {outcome['error']}")
    return outcome["report"]


def _finish(
    out: Path,
    tmp: Path,
    parts: list,
    line_skips: list[Skip],
    seen: int,
    opts: PrepareOptions,
    manifest: Path,
    world: int,
    t0: float,
) -> dict[str, Any]:
    """Rank 0: merge the ranks' parts, publish shards, write report.json then manifest.json. A run that wrote no
    sample publishes nothing (an old corpus stays whole): its report goes to report.failed.json."""
    reasons: Counter = Counter()
    skips = [s.as_dict() for s in line_skips]
    for s in line_skips:
        reasons[s.reason] += 1
    degraded: list[dict[str, Any]] = []
    records: list[ShardRecord] = []
    labels: dict[str, dict[str, set[str]]] = {}
    written = 0
    for part, _ in parts:
        reasons.update(part["reasons"])
        skips += part["skips"]
        degraded += part["degraded"]
        records += part["records"]
        written += part["written"]
        for split, sets in part["labels"].items():
            for name, values in sets.items():
                labels.setdefault(split, {}).setdefault(name, set()).update(values)
    per_split: Counter = Counter()
    for r in records:
        per_split[r.split] += r.count
    # Label values per split, so a fine-tuning run sizes its heads without reading every sample.
    label_lists = {
        split: {name: sorted(values) for name, values in sorted(sets.items())} for split, sets in sorted(labels.items())
    }
    meta = {
        "codec": opts.codec,
        "ext": CODECS[opts.codec][1],
        "fps": opts.fps,
        "size": opts.size,
        "samples_per_shard": opts.samples_per_shard,
        "labels": label_lists,
    }
    report = {
        "manifest": str(manifest),
        **meta,
        "ranks": world,
        "inputs_seen": seen,
        "inputs_written": seen - len(skips),
        "inputs_skipped": sorted(skips, key=lambda s: s["line"]),
        "inputs_degraded": sorted(degraded, key=lambda s: s["line"]),
        "samples_written": written,
        "samples_per_split": dict(sorted(per_split.items())),
        "reasons": dict(sorted(reasons.items())),
        "seconds": round(time.time() - t0, 3),
    }
    if written == 0:
        write_json_atomic(out / FAILED_REPORT, report)
        shutil.rmtree(tmp, ignore_errors=True)
        return report
    remove_published(out)  # an old corpus (--overwrite) or shards of a run killed while publishing
    write_json_atomic(out / REPORT, report)
    publish(out, records, meta)  # manifest.json last: it marks the directory complete
    shutil.rmtree(tmp, ignore_errors=True)
    return report
