"""A rank notices when the launcher above it is gone (the deepspeed runner killed alone leaves launch.py and the
ranks running): real process chains shaped like DeepSpeed's (a `deepspeed` script -> a
`... deepspeed.launcher.launch` process -> the rank), no torch.distributed. The real 2-rank run is in
tests/integration/test_launch.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO
from videobert_ds.training.stopping import ORPHAN_EXIT_CODE, launcher_role

PY = sys.executable

# The rank: records its launcher ancestors, then waits for the watch's callback and exits as a trainer would,
# or (STUCK) never stops, so that only the grace timeout ends it.
RANK = """
import json, os, sys, time
from videobert_ds.training.stopping import LauncherWatch, launcher_ancestors
out = sys.argv[1]
chain = launcher_ancestors()
def on_gone(proc):
    open(out + '/gone.json', 'w').write(json.dumps([proc.pid, proc.role]))
watch = LauncherWatch(chain, on_gone, grace_s=float(sys.argv[2]), poll_s=0.2)
open(out + '/chain.json', 'w').write(json.dumps([[p.pid, p.role] for p in chain] + [[os.getpid(), 'rank']]))
deadline = time.time() + 60
while time.time() < deadline:
    time.sleep(0.1)
    if watch.lost is not None and sys.argv[3] != 'STUCK':
        open(out + '/stopped', 'w').write('clean')
        sys.exit(0)
sys.exit(3)
"""

# launch.py's stand-in: starts the rank (its stderr to a file) and waits for it, as DeepSpeed's launch does.
LAUNCH = """
import subprocess, sys
out, grace, mode = sys.argv[1:4]
err = open(out + '/rank.err', 'w')
sys.exit(subprocess.call([sys.executable, '-c', {rank!r}, out, grace, mode], stderr=err))
"""


def _chain(tmp_path: Path, grace: float, mode: str) -> tuple[subprocess.Popen, list[list]]:
    """Start `deepspeed` (a script of that name) -> launch -> rank; -> (the runner, [[pid, role], ...])."""
    runner = tmp_path / "bin" / "deepspeed"
    runner.parent.mkdir()
    launch = LAUNCH.format(rank=RANK)
    runner.write_text(
        "import subprocess, sys\n"
        f"sys.exit(subprocess.call([sys.executable, '-u', '-c', {launch!r}, sys.argv[1], sys.argv[2], sys.argv[3], "
        "'-m', 'deepspeed.launcher.launch']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([PY, str(runner), str(tmp_path), str(grace), mode], env=env)
    deadline = time.time() + 60
    while not (tmp_path / "chain.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the rank never started"
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written in one call; let it land
    return proc, json.loads((tmp_path / "chain.json").read_text())


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the launcher watch reads Linux /proc")
def test_rank_stops_when_the_deepspeed_runner_alone_is_killed(tmp_path):
    runner, chain = _chain(tmp_path, grace=30, mode="CLEAN")
    (launch_pid, launch_role), (runner_pid, runner_role), (rank_pid, _) = chain
    assert (launch_role, runner_role) == ("launch", "runner") and runner_pid == runner.pid
    time.sleep(0.5)
    assert not (tmp_path / "gone.json").exists()  # nothing is gone yet: no false alarm
    runner.send_signal(signal.SIGTERM)  # what `kill PID` does: launch and the rank are left, as under DeepSpeed
    runner.wait(timeout=10)
    assert _wait_gone(rank_pid, 10), "the rank did not notice its launcher was gone"
    assert json.loads((tmp_path / "gone.json").read_text()) == [runner_pid, "runner"]
    assert (tmp_path / "stopped").read_text() == "clean"
    assert _wait_gone(launch_pid, 10)  # the rank exited 0, so launch does too: nothing is left


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the launcher watch reads Linux /proc")
def test_a_rank_that_does_not_stop_is_ended_after_the_grace(tmp_path):
    runner, chain = _chain(tmp_path, grace=1, mode="STUCK")
    (launch_pid, _), _, (rank_pid, _) = chain
    os.kill(launch_pid, signal.SIGKILL)  # launch.py killed hard: the rank is orphaned at once
    assert _wait_gone(rank_pid, 15), "a stuck orphaned rank was left running"
    assert json.loads((tmp_path / "gone.json").read_text())[1] == "launch"
    err = (tmp_path / "rank.err").read_text()
    assert "is gone and this rank has not stopped within 1 s" in err and "exiting without a checkpoint" in err
    assert not (tmp_path / "stopped").exists()
    runner.wait(timeout=10)
    assert ORPHAN_EXIT_CODE == 143


def test_launcher_roles():
    venv = "/x/.venv/bin"
    assert launcher_role([f"{venv}/python", f"{venv}/deepspeed", "--num_gpus", "2", "train.py"]) == "runner"
    assert launcher_role([f"{venv}/python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x"]) == "launch"
    assert launcher_role([f"{venv}/torchrun", "--nproc-per-node", "2", "train.py"]) == "torchrun"
    assert launcher_role([f"{venv}/python", "-m", "torch.distributed.run", "train.py"]) == "torchrun"
    for other in (["/bin/bash", "job.sh"], ["slurmstepd: [1.0]"], ["orted", "-mca"], [f"{venv}/python", "train.py"]):
        assert launcher_role(other) is None
