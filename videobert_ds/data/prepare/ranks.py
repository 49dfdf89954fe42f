"""The ranks of a prepare run: which MPI rank this process is, and one rank's share of the inputs.

Under ``mpirun``/``srun`` the inputs are dealt round-robin to the ranks; each writes its own temp shards
and returns a partial report that rank 0 merges (corpus.py).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from videobert_ds.data.prepare.entries import Entry, Skip
from videobert_ds.data.prepare.options import PROG, PrepareError, PrepareOptions
from videobert_ds.data.prepare.video import VideoResult, process_video
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


def run_rank(
    entries: list[Entry], opts: PrepareOptions, tmp: Path, rank: int, world: int, progress: bool | None
) -> dict[str, Any]:
    """Process this rank's share of the inputs; returns its partial report and shard records."""
    mine = entries[rank::world]
    writer = SplitShardWriter(tmp, opts.samples_per_shard, rank)
    reasons: Counter = Counter()
    skips: list[dict[str, Any]] = []
    degraded: list[dict[str, Any]] = []
    label_values: dict[str, dict[str, set[str]]] = {}  # split -> label set -> values seen
    written = 0
    tty = sys.stderr.isatty() if progress is None else progress
    try:
        bar = _progress(mine, rank, world, progress)
        for i, entry in enumerate(bar, start=1):
            try:
                res = process_video(entry, opts)
            except Exception as e:  # noqa: BLE001 - an input nobody foresaw must not end the run
                res = VideoResult(
                    skip=Skip(entry.line, "video_error", f"{type(e).__name__}: {e}", entry.id, entry.raw["video"])
                )
            reasons.update(res.reasons)
            for split, key, files, labels in res.samples:
                writer.write(split, key, files)
                for name, value in labels.items():
                    label_values.setdefault(split, {}).setdefault(str(name), set()).add(str(value))
            written += len(res.samples)
            if res.skip is not None:
                reasons[res.skip.reason] += 1
                skips.append(res.skip.as_dict())
            elif res.reasons:
                degraded.append({"line": entry.line, "id": entry.id, "reasons": dict(sorted(res.reasons.items()))})
            if not tty:
                status = f"skipped ({res.skip.reason})" if res.skip else f"{len(res.samples)} samples"
                print(f"[{PROG} r{rank}] {i}/{len(mine)} {entry.id}: {status}", file=sys.stderr, flush=True)
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {
        "reasons": reasons,
        "skips": skips,
        "degraded": degraded,
        "written": written,
        "records": records,
        "labels": label_values,
    }
