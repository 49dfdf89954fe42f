"""The ranks of a prepare run: which MPI rank this process is, and one rank's share of the inputs.

Under ``mpirun``/``srun`` the inputs are dealt round-robin to the ranks; each writes its own temp shards into the
run's work dir, journals them as they finish (work.py: what makes a killed run resumable) and returns a partial
report that rank 0 merges (corpus.py).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videobert_ds.data.prepare.entries import Entry
from videobert_ds.data.prepare.options import PROG, PrepareError, PrepareOptions
from videobert_ds.data.prepare.video import VideoResult
from videobert_ds.data.prepare.work import Journal, load_rank, remove_unjournaled
from videobert_ds.data.prepare.worker import VideoRunner
from videobert_ds.data.shards import SplitShardWriter

# Env vars set by MPI launchers (Open MPI, MPICH/Hydra and SLURM PMI2, PMIx): read before mpi4py
# is imported so a plain run never initialises MPI.
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launcher_rank() -> int:
    """This process's rank as the MPI launcher's environment says (0 without a launcher), without MPI."""
    for var in _MPI_RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def mpi_comm() -> Any | None:
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else None."""
    if not any(v in os.environ for v in _MPI_SIZE_VARS):
        if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
            # Tasks that cannot talk would each publish the whole corpus into the same dir.
            raise PrepareError("srun started several tasks without MPI: use srun --mpi=pmix (or pmi2)")
        return None
    from mpi4py import MPI  # imported only under a launcher: plain runs never init MPI

    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _progress(items: list[Entry], rank: int, world: int, show: bool | None) -> Any:
    """A bar on rank 0's terminal; off under a pipe or log file (run_rank prints a line per video there)."""
    tty = sys.stderr.isatty() if show is None else show
    return tqdm(
        items,
        desc=f"prepare r{rank}" if world > 1 else "prepare",
        unit="video",
        disable=not tty or rank != 0,
        file=sys.stderr,
    )


def _summary(entry: Entry, res: VideoResult) -> dict[str, Any]:
    """One input's part of the report (kept in the rank's journal once all its samples are in finished shards)."""
    reasons = Counter(res.reasons)
    skip = degraded = None
    if res.skip is not None:
        reasons[res.skip.reason] += 1
        skip = res.skip.as_dict()
    elif res.reasons:
        degraded = {"line": entry.line, "id": entry.id, "reasons": dict(sorted(res.reasons.items()))}
    labels: dict[str, dict[str, set[str]]] = {}
    for split, _, _, sample_labels in res.samples:
        for name, value in sample_labels.items():
            labels.setdefault(split, {}).setdefault(str(name), set()).add(str(value))
    return {
        "reasons": dict(reasons),
        "skip": skip,
        "degraded": degraded,
        "written": len(res.samples),
        "labels": {sp: {n: sorted(v) for n, v in sets.items()} for sp, sets in labels.items()},
    }


def run_rank(
    entries: list[Entry], opts: PrepareOptions, tmp: Path, rank: int, world: int, progress: bool | None
) -> dict[str, Any]:
    """Process this rank's share of the inputs into ``tmp`` (the run's work dir); returns its partial report and
    shard records. A journal of this rank already in ``tmp`` (a killed run, resumed) is continued: its finished
    shards and done inputs are kept, its unfinished files removed, and only the rest is processed."""
    mine = entries[rank::world]
    state = load_rank(tmp, rank)
    removed = remove_unjournaled(tmp, rank, state)
    if state.shards or state.done or removed:
        print(
            f"[{PROG} r{rank}] resuming: {len(state.done)}/{len(mine)} inputs done, {len(state.shards)} shards "
            f"kept, {removed} unfinished files removed",
            file=sys.stderr,
            flush=True,
        )
    writer = SplitShardWriter(tmp, opts.samples_per_shard, rank, first_seq=state.next_seq)
    done = dict(state.done)
    pending: dict[int, dict[str, Any]] = {}  # processed, some sample still in an open shard
    keys_of = {pos: list(keys) for pos, keys in state.partial.items()}  # samples written, per unfinished input
    committed = 0  # writer.finished[:committed] are in the journal

    def commit(complete: bool) -> None:
        nonlocal committed
        open_keys = writer.open_keys()
        for pos in list(pending):
            if not open_keys.intersection(keys_of.get(pos, ())):
                done[pos] = pending.pop(pos)
                keys_of.pop(pos, None)
        partial = {pos: [k for k in keys if k not in open_keys] for pos, keys in keys_of.items()}
        new_done = {pos: done[pos] for pos in done if pos not in state.done}
        journal.commit(writer.finished[committed:], new_done, {p: k for p, k in partial.items() if k},
                       writer.next_seq, complete)  # fmt: skip
        state.done.update(new_done)
        committed = len(writer.finished)

    tty = sys.stderr.isatty() if progress is None else progress
    journal = Journal(tmp, rank, state.journal_bytes)
    try:
        bar = _progress(mine, rank, world, progress)
        with VideoRunner(opts.video_timeout) as runner:
            for pos, entry in enumerate(bar):
                if pos in done:
                    continue
                res = runner.process(entry, opts)
                already = set(state.partial.get(pos, ()))  # written before the kill, in a finished shard
                for split, key, files, _ in res.samples:
                    if key not in already:
                        writer.write(split, key, files)
                        keys_of.setdefault(pos, []).append(key)
                pending[pos] = _summary(entry, res)
                if len(writer.finished) > committed:
                    commit(complete=False)
                if not tty:
                    status = f"skipped ({res.skip.reason})" if res.skip else f"{len(res.samples)} samples"
                    print(f"[{PROG} r{rank}] {pos + 1}/{len(mine)} {entry.id}: {status}", file=sys.stderr, flush=True)
        writer.close()
        commit(complete=True)
    except BaseException:
        writer.discard_open()  # finished shards stay: the journal names them, so --resume keeps them
        raise
    finally:
        journal.close()
    reasons: Counter = Counter()
    skips: list[dict[str, Any]] = []
    degraded: list[dict[str, Any]] = []
    label_values: dict[str, dict[str, set[str]]] = {}  # split -> label set -> values seen
    for pos in sorted(done):
        d = done[pos]
        reasons.update(d["reasons"])
        if d["skip"] is not None:
            skips.append(d["skip"])
        if d["degraded"] is not None:
            degraded.append(d["degraded"])
        for split, sets in d["labels"].items():
            for name, values in sets.items():
                label_values.setdefault(split, {}).setdefault(name, set()).update(values)
    return {
        "reasons": reasons,
        "skips": skips,
        "degraded": degraded,
        "written": sum(d["written"] for d in done.values()),
        "records": state.shards + writer.finished,
        "labels": label_values,
    }
