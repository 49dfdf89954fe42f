"""videobert-prepare under a real MPI: two mpirun ranks, killed part-way (SIGKILL to mpirun and every rank) and
resumed with --resume, write the same samples as one process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN
from tests.helpers.shards import only_published_files, read_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


@pytest.mark.multiproc
def test_mpirun_two_ranks_killed_and_resumed_gives_same_samples(
    synth_corpus: Path, prepared_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mpi"
    work = out / ".prepare.work"
    prepare = [
        str(VENV_BIN / "videobert-prepare"),
        "--manifest",
        str(synth_corpus),
        "--out",
        str(out),
        "--fps",
        "8",
        "--size",
        "32",
        "--samples-per-shard",
        "2",
        "--decode-threads",
        "1",
        "--no-progress",
    ]
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", "OMP_NUM_THREADS"]
    proc = subprocess.Popen([*mpirun, *prepare], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journals = [work / "r00000.journal", work / "r00001.journal"]
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if all(j.is_file() and j.stat().st_size > 0 for j in journals):  # each rank has finished a shard
            break
        time.sleep(0.005)
    for pid in _descendants(proc.pid):  # the job is lost at once: mpirun and both ranks
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists()

    # one process cannot resume a 2-rank run: each rank resumes its own share
    r = subprocess.run([*prepare, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "started with 2 rank(s), this run has 1" in r.stderr.strip().splitlines()[-1], r.stderr

    r = subprocess.run([*mpirun, *prepare, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[videobert-prepare r0] resuming:" in r.stderr and "[videobert-prepare r1] resuming:" in r.stderr
    only_published_files(out)
    report = json.loads((out / "report.json").read_text())
    assert report["ranks"] == 2
    mpi, single = read_shards(out), read_shards(prepared_shards)
    assert {k: v["meta"] for k, v in mpi.items()} == {k: v["meta"] for k, v in single.items()}
    want = json.loads((prepared_shards / "report.json").read_text())
    for k in ("inputs_skipped", "inputs_degraded", "samples_per_split", "reasons", "labels"):
        assert report[k] == want[k], k
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    assert names == [f"shard-{i:06d}.tar" for i in range(len(names))]
