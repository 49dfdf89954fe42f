"""Launch real multi-rank training runs from tests (the deepspeed launcher on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus any outer SLURM job, MPI launch or rendezvous, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_")) and k not in ("MASTER_ADDR", "MASTER_PORT", "RANK")
    }
    env.update(extra)
    return env


def write_ds_config(path: Path, micro_batch: int = 2, **overrides) -> Path:
    """The shipped CPU ZeRO-3 config with a test-sized micro-batch."""
    cfg = json.loads((REPO / "ds_configs" / "zero3_cpu.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg.update(overrides)
    path.write_text(json.dumps(cfg))
    return path


def deepspeed_cmd(ds_config: Path, config: str, overrides: list[str], num_ranks: int = 2) -> list[str]:
    return [
        str(DEEPSPEED),
        "--num_gpus",
        str(num_ranks),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(REPO / "videobert_ds" / "train.py"),
        "--deepspeed",
        str(ds_config),
        "--config",
        config,
        *overrides,
    ]


def run_training(
    ds_config: Path,
    config: str,
    overrides: list[str],
    *,
    num_ranks: int = 2,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        deepspeed_cmd(ds_config, config, overrides, num_ranks),
        cwd=REPO,
        env=env or launch_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl by step (training and validation lines for one step merged)."""
    by_step: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row.pop("step"), {}).update(row)
    return by_step
