"""A stage run as rank 0 of 1 without the deepspeed launcher: videobert_ds/train.py in a plain process with the
env:// variables a launcher would set (seconds cheaper than a launch, for short single-rank runs)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO
from tests.helpers.distributed import clean_env, free_port


def run_one_rank(config: str, overrides: dict, ds_config: str = "zero3_cpu.json") -> subprocess.CompletedProcess:
    env = clean_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env["OMP_NUM_THREADS"] = "1"
    train, ds = REPO / "videobert_ds" / "train.py", REPO / "ds_configs" / ds_config
    cmd = [sys.executable, str(train), "--deepspeed", str(ds), "--config", config]
    cmd += [f"{k}={v}" for k, v in overrides.items()]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
