"""Launchers for real: two mpirun ranks on loopback meet through the exec wrapper's mapping; a 2-rank deepspeed run
whose `deepspeed` command alone is sent SIGTERM checkpoints and leaves no rank behind."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import REPO
from tests.helpers.distributed import clean_env, deepspeed_cmd, free_port, launch_env, launcher_tree, write_ds_config
from tests.helpers.http import http_server

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


@pytest.mark.multiproc
def test_sigterm_to_the_deepspeed_command_alone_stops_every_rank_with_a_checkpoint(prepared_shards, tmp_path):
    """`kill PID` on the `deepspeed` runner ends that process alone (DeepSpeed forwards nothing on one node):
    its launch.py and the ranks used to train on, orphaned. Now the ranks see the runner gone, checkpoint at one
    agreed step and exit, and launch.py with them. The ranks read their shards over HTTP from 127.0.0.1 with
    data.on_error=skip, one train shard cut short: its lost samples are counted in metrics.jsonl, and the ranks
    still take equal steps (they agree on the stop step instead of hanging)."""
    run_dir = tmp_path / "run"
    shards = tmp_path / "shards"
    shutil.copytree(prepared_shards, shards)
    listed = json.loads((shards / "manifest.json").read_text())["shards"]
    cut = shards / next(e["file"] for e in listed if e["split"] == "train")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    server = http_server(shards)
    url = server.__enter__()
    settings = {
        "run.dir": run_dir,
        "data.shards": url,
        "data.on_error": "skip",
        "data.max_skip_share": 0.9,
        "data.retry_backoff_s": 0.01,
        "data.num_threads": 1,
        "schedule.max_steps": 100000,
        "schedule.warmup_steps": 2,
        "schedule.log_every": 1,
        "schedule.val_every": 100000,
        "schedule.checkpoint_every": 100000,
    }
    ds_config = write_ds_config(tmp_path / "ds.json", micro_batch=2)
    cmd = deepspeed_cmd(ds_config, "video_encoder_tiny", [f"{k}={v}" for k, v in settings.items()])
    log_path = tmp_path / "out.log"  # a file, not a pipe: orphaned ranks must never block on a full pipe
    with log_path.open("w") as log:
        runner = subprocess.Popen(cmd, cwd=REPO, env=launch_env(), stdout=log, stderr=subprocess.STDOUT)
    tree: list[psutil.Process] = []
    try:
        deadline = time.time() + 300
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert runner.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
        launchers, ranks = launcher_tree(runner.pid)
        tree = launchers + ranks
        assert len(ranks) == 2 and launchers

        sent = time.time()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == -signal.SIGTERM  # the runner dies at once, as before
        _, alive = psutil.wait_procs(tree, timeout=120)
        took = time.time() - sent
        assert not alive, f"left running: {alive}"
    finally:  # whatever failed above, leave no process behind
        if runner.poll() is None:
            runner.kill()
        for p in tree:
            if p.is_running():
                p.kill()
        server.__exit__(None, None, None)
    out = log_path.read_text()
    assert took < 90, f"the ranks took {took:.0f} s to stop"
    assert f"the runner launcher (pid {runner.pid}) is gone" in out, out[-4000:]
    stop = re.search(r"stopped by signal 15 at step (\d+); checkpoint saved", out)
    assert stop, out[-4000:]
    step = int(stop.group(1))
    tag = (run_dir / "checkpoints" / "latest").read_text()
    assert tag == f"step{step:08d}" and (run_dir / "checkpoints" / tag / "COMPLETE").is_file()
    assert not (run_dir / "final").exists()  # a stopped run is not exported; resume it with the same command
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["data/skipped_read"] > 0 and rows[0]["data/seen"] > rows[0]["data/skipped_read"]
    assert rows[-1]["data/skipped_share"] <= 0.9
