"""The launcher under a real MPI: two mpirun ranks on loopback meet through the exec wrapper's mapping."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.distributed import clean_env, free_port

PY = sys.executable


@pytest.mark.multiproc
def test_mpirun_ranks_meet_through_the_mapping(tmp_path):
    """Two mpirun ranks on loopback: the exec wrapper's RANK/WORLD_SIZE/MASTER_* (all five set, so DeepSpeed
    skips its own MPI discovery) join them into one gloo group through env://."""
    # Results go to files: Open MPI's stdout forwarding can drop the last line of a rank that exits at once.
    code = (
        "import torch, torch.distributed as dist; dist.init_process_group('gloo', init_method='env://'); "
        "t = torch.ones(1) * (dist.get_rank() + 1); dist.all_reduce(t); "
        f"open(f'{tmp_path}/rank{{dist.get_rank()}}.txt', 'w').write("
        "f'RESULT {dist.get_rank()} {dist.get_world_size()} {int(t.item())}'); dist.destroy_process_group()"
    )
    cmd = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "2",
        "-x",
        "MASTER_ADDR=127.0.0.1",
        "-x",
        "MASTER_PORT=" + str(free_port()),
        "-x",
        "PATH",
        "-x",
        "OMP_NUM_THREADS=1",
        PY,
        "-m",
        "videobert_ds.cli.launch",
        "exec",
        "--",
        PY,
        "-c",
        code,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    results = sorted(f.read_text().split()[1:] for f in tmp_path.glob("rank*.txt"))
    assert results == [["0", "2", "3"], ["1", "2", "3"]]
    assert "mpi: rank 1/2" in r.stderr
