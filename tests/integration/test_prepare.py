"""videobert-prepare under a real MPI: two mpirun ranks write the same samples as one process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import VENV_BIN
from tests.helpers.shards import only_published_files, read_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.multiproc
def test_mpirun_two_ranks_gives_same_samples(synth_corpus: Path, prepared_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "mpi"
    cmd = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "2",
        "-x",
        "OMP_NUM_THREADS",
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
        "8",
        "--decode-threads",
        "1",
    ]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    only_published_files(out)
    report = json.loads((out / "report.json").read_text())
    assert report["ranks"] == 2
    mpi, single = read_shards(out), read_shards(prepared_shards)
    assert {k: v["meta"] for k, v in mpi.items()} == {k: v["meta"] for k, v in single.items()}
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    assert names == [f"shard-{i:06d}.tar" for i in range(len(names))]
