"""A whole prepare run: check the output dir, run every rank's share, then rank 0 merges the parts, publishes
the shards and writes report.json and manifest.json (last: its presence marks the directory complete)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from videobert_ds.data.prepare.entries import Skip, read_manifest
from videobert_ds.data.prepare.options import PrepareError, PrepareOptions
from videobert_ds.data.prepare.ranks import mpi_comm, run_rank
from videobert_ds.data.shards import REPORT, ShardRecord, is_complete, publish, remove_published, write_json_atomic
from videobert_ds.data.video_io import CODECS


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or one holding a complete corpus unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a directory")
    if is_complete(out) and not overwrite:
        raise PrepareError(f"output {out} already holds a prepared corpus (use --overwrite to replace it)")


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
    Raises PrepareError for bad arguments or an existing complete output without ``overwrite``.
    """
    opts = PrepareOptions(**options)
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise PrepareError(f"manifest not found: {manifest}")
    if isinstance(comm, str) and comm == "auto":
        comm = mpi_comm()
    rank, world = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    t0 = time.time()

    # Rank 0 decides (output check, run id) and everyone follows, so ranks never disagree.
    decision: dict[str, Any] = {}
    if rank == 0:
        try:
            _check_out(out, overwrite)
            out.mkdir(parents=True, exist_ok=True)
            decision = {"run": f"{uuid.uuid4().hex[:12]}"}
        except PrepareError as e:
            decision = {"error": str(e)}
    if comm is not None:
        decision = comm.bcast(decision, root=0)
    if "error" in decision:
        raise PrepareError(decision["error"])
    tmp = out / f".partial-{decision['run']}"

    entries, line_skips, seen = read_manifest(manifest)
    try:
        part: dict[str, Any] | None = run_rank(entries, opts, tmp, rank, world, progress)
        failure = None
    except Exception as e:  # noqa: BLE001 - reported to rank 0 so no rank hangs in gather
        part, failure = None, f"rank {rank}: {type(e).__name__}: {e}"
    parts = comm.gather((part, failure), root=0) if comm is not None else [(part, failure)]

    report: dict[str, Any] | None = None
    if rank == 0:
        failures = [f for _, f in parts if f]
        if failures:
            shutil.rmtree(tmp, ignore_errors=True)
            report = {"error": "; ".join(failures)}
        else:
            report = _finish(out, tmp, parts, line_skips, seen, opts, manifest, world, overwrite, t0)
    if comm is not None:
        report = comm.bcast(report, root=0)
    if "error" in report:
        raise RuntimeError(f"prepare failed: {report['error']}")
    return report


def _finish(
    out: Path,
    tmp: Path,
    parts: list,
    line_skips: list[Skip],
    seen: int,
    opts: PrepareOptions,
    manifest: Path,
    world: int,
    overwrite: bool,
    t0: float,
) -> dict[str, Any]:
    """Rank 0: merge the ranks' parts, publish shards, write report.json then manifest.json."""
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
    remove_published(out)  # an old corpus (--overwrite) or shards of a run killed while publishing
    write_json_atomic(out / REPORT, report)
    publish(out, records, meta)  # manifest.json last: it marks the directory complete
    shutil.rmtree(tmp, ignore_errors=True)
    for stale in out.glob(".partial-*"):  # left by runs that were killed
        shutil.rmtree(stale, ignore_errors=True)
    return report
