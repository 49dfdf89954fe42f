"""A whole prepare run: check and lock the output dir, run every rank's share, then rank 0 merges the parts, publishes
the shards and writes report.json and manifest.json (last: its presence marks the directory complete).

The ranks work in ``OUT/.prepare.work`` and journal every finished shard (work.py), so a run killed at any point is
continued by the same command with ``--resume``; ``--append`` adds new shards after a corpus's own, which stay as
they are. Without either flag, a work dir left by a killed run is refused in one line (``--resume`` or
``--overwrite``)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from videobert_ds.data.decoders.nvdec import gpu_decodable, nvdec_min_size
from videobert_ds.data.prepare.entries import Entry, Inputs, InputSource, ManifestSource, Skip
from videobert_ds.data.prepare.lock import OutputLock, remove_stale_partials
from videobert_ds.data.prepare.options import PROG, PrepareError, PrepareOptions
from videobert_ds.data.prepare.ranks import mpi_comm, run_rank
from videobert_ds.data.prepare.work import (
    PUBLISH_FILE,
    RUN_FILE,
    WORK_NAME,
    describe_mismatch,
    inputs_fingerprint,
    run_identity,
)
from videobert_ds.data.shards import (
    FAILED_REPORT,
    MANIFEST,
    REPORT,
    ShardRecord,
    apply_publish,
    is_complete,
    plan_publish,
    remove_published,
    shard_keys,
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


class _Mismatch(PrepareError):
    """This run cannot continue or repeat the one recorded in OUT (other options, inputs or ranks)."""


def _check_out(out: Path, replace_ok: bool) -> None:
    """Refuse an output path that is a file, or one holding a complete corpus unless ``replace_ok`` (--overwrite,
    or --append / --resume, which decide later what to do with it)."""
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a directory")
    if is_complete(out) and not replace_ok:
        raise PrepareError(f"output {out} already holds a prepared corpus (use --overwrite to replace it)")


def _read_json(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (a run killed before writing it whole)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def _decide(out: Path, opts: PrepareOptions, overwrite: bool, resume: bool, append: bool) -> dict[str, Any]:
    """Rank 0, under the lock: what this run does with what is in ``out`` (the decision every rank follows)."""
    work = out / WORK_NAME
    run = _read_json(work / RUN_FILE)
    if run is None and work.exists():
        shutil.rmtree(work)  # killed before it recorded what it was: nothing it did can be trusted or resumed
    if run is not None and overwrite:
        shutil.rmtree(work)
        run = None
    if run is not None and not resume:
        raise PrepareError(
            f"output {out} holds the work of an unfinished run (killed or failed): "
            "pass --resume to continue it or --overwrite to start over"
        )
    decision: dict[str, Any] = {"work": str(work), "mode": "append" if append else "fresh", "run": run}
    if run is None and resume and is_complete(out):
        # A finished run repeated (e.g. a requeued job): nothing to do when it is one of the corpus's runs.
        decision["report"] = _read_json(out / REPORT) or {}
        if not append:
            decision["mode"] = "done"
            return decision
    if append:
        old = _read_json(out / MANIFEST)
        if old is None:
            raise PrepareError(f"--append needs a prepared corpus in {out} (no readable {MANIFEST})")
        differ = [
            f"{k} {old.get(k)!r} there, {getattr(opts, k)!r} here"
            for k in ("codec", "fps", "size")
            if old.get(k) != getattr(opts, k)
        ]
        if differ:
            raise PrepareError(f"--append: the corpus in {out} has other clip settings ({'; '.join(differ)})")
        try:  # the video keys already in the corpus: an input with one is skipped (already_in_corpus)
            keys = {k.rsplit("_", 1)[0] for sh in old["shards"] for k in shard_keys(out / sh["idx"])}
        except (OSError, KeyError, TypeError) as e:
            raise PrepareError(f"--append: cannot read the shard indexes of {out}: {e}") from None
        decision["keys"] = sorted(keys)
    work.mkdir(exist_ok=True)
    if (work / PUBLISH_FILE).exists():
        decision["publish"] = True  # every rank had finished; the kill came while publishing
    return decision


def _start(
    out: Path, overwrite: bool, opts: PrepareOptions, resume: bool = False, append: bool = False
) -> tuple[OutputLock, dict[str, Any]]:
    """Rank 0: check and lock the output dir, remove the partial dirs of older versions' runs that are gone, and
    decide what to do with a work dir or corpus already there."""
    if append and overwrite:
        raise PrepareError("--append adds to the corpus in --out and --overwrite replaces it: choose one")
    if resume and overwrite:
        raise PrepareError("--resume continues the unfinished run in --out and --overwrite discards it: choose one")
    _check_out(out, overwrite or resume or append)  # before touching anything
    lock = OutputLock(out)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as e:
            raise PrepareError(_cannot_write(out, e)) from None
        _check_out(out, overwrite or resume or append)  # again under the lock: another run may have published
        try:
            remove_stale_partials(out)
            decision = _decide(out, opts, overwrite, resume, append)
        except OSError as e:
            raise PrepareError(_cannot_write(out, e)) from None
    except BaseException:
        lock.release()
        raise
    warning = nvdec_warning(opts)
    if warning:
        log.warning(warning)
    return lock, decision


def prepare_corpus(
    manifest: Path | str | InputSource,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    progress: bool | None = None,
    comm: Any | None = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Prepare the corpus listed in ``manifest`` into shards under ``out``; returns the report
    (also written to ``out/report.json``). Under MPI every rank calls this and gets the report.

    ``manifest``: a JSONL input manifest's path, or an InputSource (entries.py), e.g.
    ``videobert_ds.data.annotations.AnnotationSource`` for a published annotation file and its videos.

    ``options``: the fields of PrepareOptions by keyword (codec, fps, size, samples_per_shard, window,
    max_clip_seconds, min_clip_seconds, decode_threads, video_timeout); the rest take its defaults.
    ``resume``: continue the run killed in ``out`` (same options, inputs and number of ranks), keeping its finished
    shards; without one, start afresh; over a complete corpus that one of its runs made, do nothing.
    ``append``: add the inputs' videos to the corpus in ``out`` as new shards (its own stay as they are); videos
    whose id the corpus has are skipped (``already_in_corpus``).
    ``comm``: an mpi4py communicator, None for a single process, or "auto" (detect a launcher).
    Raises PrepareError (one line for the user) for bad arguments, an existing complete output without
    ``overwrite``/``append``, the work of a killed run without ``resume``/``overwrite``, an output dir another run
    holds (``out/.prepare.lock``), or one that cannot be written (full, read-only, no permission, not a directory).
    A run that writes no sample publishes nothing and returns its report (``samples_written`` 0), which it writes
    to ``out/report.failed.json``.
    """
    opts = PrepareOptions(**options)
    source = ManifestSource(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
    out = Path(out)
    source.check()  # a missing input file fails before the output dir is touched
    if isinstance(comm, str) and comm == "auto":
        comm = mpi_comm()
    rank, world = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    t0 = time.time()

    # Rank 0 decides (output check and lock, work dir) and everyone follows, so ranks never disagree.
    decision: dict[str, Any] = {}
    lock: OutputLock | None = None
    if rank == 0:
        try:
            lock, decision = _start(out, overwrite, opts, resume, append)
        except PrepareError as e:
            decision = {"error": str(e)}
    try:
        if comm is not None:
            decision = comm.bcast(decision, root=0)
        if "error" in decision:
            raise PrepareError(decision["error"])
        return _run(source, out, decision, opts, comm, rank, world, progress, t0)
    finally:
        if lock is not None:
            lock.release()


def _same_run(identity: dict[str, Any], report: dict[str, Any]) -> bool:
    """Whether one of the runs ``report`` lists had these options and inputs (the ranks may differ)."""
    return any(
        all((r.get("identity") or {}).get(k) == identity[k] for k in ("mode", "options", "inputs"))
        for r in report.get("runs", [])
    )


def _check_identity(decision: dict[str, Any], identity: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """Every rank: refuse a --resume that is not the recorded run; the old report when there is nothing to do."""
    if "report" in decision and _same_run(identity, decision["report"]):
        return decision["report"]
    if decision["mode"] == "done":
        raise _Mismatch(
            f"output {out} already holds a prepared corpus from other inputs or options "
            "(use --overwrite to replace it or --append to add to it)"
        )
    run = decision.get("run")
    if run is not None:
        why = describe_mismatch(run, identity)
        if why:
            raise _Mismatch(f"cannot --resume the unfinished run in {out}: {why} (or pass --overwrite to start over)")
    return None


def _drop_in_corpus(entries: list[Entry], keys: set[str]) -> tuple[list[Entry], list[Skip]]:
    """--append: the inputs whose video the corpus already has become skips (``already_in_corpus``)."""
    kept, skips = [], []
    for e in entries:
        if e.key in keys:
            video = str(e.raw.get("video", e.video))
            skips.append(Skip(e.line, "already_in_corpus", f"id {e.id!r} is already in the corpus", e.id, video))
        else:
            kept.append(e)
    return kept, skips


def _worth_keeping(work: Path) -> bool:
    """Whether a failed run leaves finished shards (or a publish under way) that --resume can use."""
    return (work / PUBLISH_FILE).exists() or any(work.glob("r*-*.tar"))


def _run(
    source: InputSource,
    out: Path,
    decision: dict[str, Any],
    opts: PrepareOptions,
    comm: Any | None,
    rank: int,
    world: int,
    progress: bool | None,
    t0: float,
) -> dict[str, Any]:
    """Every rank: its share into the work dir; rank 0 merges and publishes. Failures travel to rank 0 (no rank
    hangs in gather) as (one line for the user?, message, the work dir is to be kept as it is?)."""
    tmp = Path(decision["work"]) if "work" in decision else out / WORK_NAME
    line_skips: list[Skip] = []
    seen = 0
    part: dict[str, Any] | None = None
    failure: tuple[bool, str, bool] | None = None
    identity: dict[str, Any] = {}
    inputs = Inputs([], [], 0)
    try:
        inputs = source.read()  # PrepareError (one line) for an unreadable or malformed input file
        entries, line_skips, seen = inputs.entries, inputs.skips, inputs.seen
        mode = "append" if decision["mode"] == "append" else "fresh"
        identity = run_identity(opts, inputs_fingerprint(entries, line_skips, seen), world, mode)
        previous = _check_identity(decision, identity, out)
        if previous is not None:
            log.warning(f"{PROG}: {out} already holds this run's corpus: nothing to do")
            return previous  # every rank computed the same: all return here
        if rank == 0 and decision.get("run") is None:
            write_json_atomic(tmp / RUN_FILE, identity)  # from now on the work dir can be resumed
        if decision["mode"] == "append":
            entries, in_corpus = _drop_in_corpus(entries, set(decision["keys"]))
            line_skips = line_skips + in_corpus
        if not decision.get("publish"):
            part = run_rank(entries, opts, tmp, rank, world, progress)
    except _Mismatch as e:
        failure = (True, str(e), True)
    except PrepareError as e:
        failure = (True, str(e), False)
    except OSError as e:
        user = e.errno in _OUTPUT_ERRNOS
        failure = (user, _cannot_write(out, e) if user else f"{e!r}", False)
    except Exception as e:  # noqa: BLE001 - reported to rank 0 so no rank hangs in gather
        failure = (False, f"rank {rank}: {type(e).__name__}: {e}", False)
    parts = comm.gather((part, failure), root=0) if comm is not None else [(part, failure)]

    outcome: dict[str, Any] = {}
    if rank == 0:
        failures = [f for _, f in parts if f]
        if not failures:
            try:
                if decision.get("publish"):
                    outcome = {"report": _complete_publish(out, tmp)}
                else:
                    run = {"ranks": world, "identity": identity}
                    outcome = {"report": _finish(out, tmp, parts, line_skips, seen, opts, inputs, run, t0)}
            except OSError as e:
                if e.errno not in _OUTPUT_ERRNOS:
                    raise
                failures = [(True, _cannot_write(out, e), False)]
        if failures:
            messages = list(dict.fromkeys(m for _, m, _ in failures))  # ranks out of space all say the same
            error = "; ".join(messages)
            if any(keep for _, _, keep in failures):
                pass  # not this run's work to judge: the recorded run stays resumable as it was
            elif _worth_keeping(tmp):
                error += f" (finished shards kept in {tmp}: rerun with --resume to continue)"
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            outcome = {"error": error, "user": all(u for u, _, _ in failures)}
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
    inputs: Inputs,
    run: dict[str, Any],
    t0: float,
) -> dict[str, Any]:
    """Rank 0: merge the ranks' parts, publish shards, write report.json then manifest.json. A run that wrote no
    sample publishes nothing (an old corpus stays whole): its report goes to report.failed.json. ``run``: the
    number of ranks and the run's identity (kept in the report so a repeated --resume can tell it is done)."""
    reasons: Counter = Counter(inputs.reasons)  # the input file's problems not tied to one input
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
    append = run["identity"]["mode"] == "append"
    old_manifest = _read_json(out / MANIFEST) if append else None
    old_report = (_read_json(out / REPORT) or {}) if append else None
    if old_manifest:  # the corpus's label values too
        for split, sets in old_manifest.get("labels", {}).items():
            for name, values in sets.items():
                labels.setdefault(split, {}).setdefault(name, set()).update(values)
    # Label values per split, so a fine-tuning run sizes its heads without reading every sample.
    label_lists = {
        split: {name: sorted(values) for name, values in sorted(sets.items())} for split, sets in sorted(labels.items())
    }
    meta = {
        "codec": opts.codec,
        "ext": CODECS[opts.codec][1],
        "fps": opts.fps,
        "size": opts.size,
        "samples_per_shard": old_manifest.get("samples_per_shard", opts.samples_per_shard)
        if old_manifest
        else opts.samples_per_shard,
        "labels": label_lists,
    }
    report = {
        **inputs.info,  # format, and manifest or annotations + videos
        **meta,
        "ranks": run["ranks"],
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
        report["runs"] = [_run_summary(report, run)]
        write_json_atomic(out / FAILED_REPORT, report)
        shutil.rmtree(tmp, ignore_errors=True)
        return report
    report = _combine_reports(old_report, report, run)
    if not append:
        remove_published(out)  # an old corpus (--overwrite) or shards of a run killed while publishing
    renames, manifest_doc = plan_publish(records, meta, old_manifest)
    # The plan first: a run killed from here on is finished by --resume (apply_publish is idempotent).
    write_json_atomic(tmp / PUBLISH_FILE, {"renames": renames, "report": report, "manifest": manifest_doc})
    return _complete_publish(out, tmp)


def _complete_publish(out: Path, tmp: Path) -> dict[str, Any]:
    """Rank 0: carry out the publish plan in the work dir (again, after a kill), then remove the work dir."""
    plan = json.loads((tmp / PUBLISH_FILE).read_text(encoding="utf-8"))
    apply_publish(out, [tuple(r) for r in plan["renames"]], plan["report"], plan["manifest"])
    (out / FAILED_REPORT).unlink(missing_ok=True)  # an earlier run's that published nothing
    shutil.rmtree(tmp, ignore_errors=True)
    return plan["report"]


_RUN_LISTS = ("inputs_skipped", "inputs_degraded", "labels", "runs")  # in the top-level report only


def _run_summary(report: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """One run's entry in report.json's ``runs``: its counts (not the per-input lists) and identity."""
    return {**{k: v for k, v in report.items() if k not in _RUN_LISTS}, "identity": run["identity"]}


def _combine_reports(old: dict[str, Any] | None, new: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The report of the corpus: counts summed over its runs (one, or more after --append), every run's skipped and
    degraded inputs (those of appended runs tagged with the run's index), and ``runs``, one summary each."""
    if not old:
        return {**new, "runs": [_run_summary(new, run)]}
    runs = list(old.get("runs") or [_run_summary(old, {"identity": None})])
    n = len(runs)
    combined = dict(new)
    for k in ("inputs_seen", "inputs_written", "samples_written"):
        combined[k] = old.get(k, 0) + new[k]
    combined["seconds"] = round(old.get("seconds", 0) + new["seconds"], 3)
    for k in ("samples_per_split", "reasons"):
        combined[k] = dict(sorted((Counter(old.get(k, {})) + Counter(new[k])).items()))
    for k in ("inputs_skipped", "inputs_degraded"):
        combined[k] = list(old.get(k, [])) + [{**s, "run": n} for s in new[k]]
    combined["runs"] = [*runs, _run_summary(new, run)]
    return combined
