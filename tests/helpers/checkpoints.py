"""One tiny real training run (1 rank, CPU, stage 1's clip autoencoder: seconds) whose checkpoints the
reliability tests copy and damage: truncated files, planted pickles, old-style completion markers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tests.helpers.distributed import free_port, launch_env, write_ds_config

CONFIG = "video_encoder_tiny"
_RUNS: dict[Path, Path] = {}


def train_one_rank(run_dir: Path, shards: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """train.py as a single rank (env:// on loopback, no launcher): 4 steps, checkpoints at steps 2 and 4.
    `args`: more options or dotted overrides (later ones win)."""
    ds_config = write_ds_config(run_dir.parent / f"{run_dir.name}.ds.json", micro_batch=2)
    overrides = {
        "run.dir": run_dir,
        "data.shards": shards,
        "data.num_threads": 1,
        "schedule.max_steps": 4,
        "schedule.warmup_steps": 1,
        "schedule.log_every": 1,
        "schedule.val_every": 100,
        "schedule.val_batches": 1,
        "schedule.checkpoint_every": 2,
        "schedule.keep_checkpoints": 3,
    }
    env = launch_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_PORT=str(free_port()))
    cmd = [sys.executable, str(REPO / "videobert_ds" / "train.py"), "--deepspeed", str(ds_config)]
    cmd += ["--config", CONFIG, *(f"{k}={v}" for k, v in overrides.items()), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_run(shards: Path, tmp_path_factory) -> Path:
    """The shared run (built once per test session, whichever module asks first). Copy it before damaging it."""
    base = tmp_path_factory.getbasetemp()
    if base not in _RUNS:
        run_dir = tmp_path_factory.mktemp("ckpt") / "run"
        proc = train_one_rank(run_dir, shards)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _RUNS[base] = run_dir
    return _RUNS[base]


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def optim_file(tag_dir: Path) -> Path:
    return next(tag_dir.glob("*optim_states.pt"))


def model_file(tag_dir: Path) -> Path:
    return next(tag_dir.glob("*model_states.pt"))


def truncate(path: Path, keep: float = 0.5) -> None:
    """What a node dying mid-write (or a full disk) leaves: the file's first part."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class Planted:
    """Unpickling this calls open(marker, "w"): the marker file appearing means the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickle(path: Path, marker: Path) -> None:
    """Add a code-running object to a checkpoint file, as someone who can write to the run dir would, and
    update the completion record's sizes to match (they can rewrite that too)."""
    import torch

    state = torch.load(path, weights_only=False)  # our own fresh test file: trusted
    state["planted"] = Planted(marker)
    torch.save(state, path)
    complete = path.parent / "COMPLETE"
    record = json.loads(complete.read_text())
    if isinstance(record, dict):  # a marker with the files' sizes
        record["files"][path.name] = path.stat().st_size
        complete.write_text(json.dumps(record))
