"""Launch real multi-rank training runs from tests (the deepspeed launcher on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil

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


def write_ds_config(
    path: Path, micro_batch: int | None = 2, *, base: str = "zero3_cpu.json", bf16: bool = False, **overrides
) -> Path:
    """A shipped CPU ZeRO-3 config (`base`) with a test-sized micro-batch (None: the shipped one) and, with
    `bf16`, the precision the GPU configs train in (bf16 ZeRO-3 runs on CPU gloo ranks too)."""
    cfg = json.loads((REPO / "ds_configs" / base).read_text())
    if micro_batch is not None:
        cfg["train_micro_batch_size_per_gpu"] = micro_batch
    if bf16:
        cfg["bf16"] = {"enabled": True}
    cfg.update(overrides)
    path.write_text(json.dumps(cfg))
    return path


def assert_trained_in_bf16(run_dir: Path) -> None:
    """The run's checkpoints hold bf16 ZeRO-3 optimizer shards (DeepSpeed names them bf16_zero_*), and its
    export is fp32 (zero_to_fp32 gathers the fp32 master weights)."""
    from safetensors import safe_open

    shards = list((run_dir / "checkpoints").glob("step*/bf16_zero_pp_rank_*_optim_states.pt"))
    assert shards, f"{run_dir}: no bf16 ZeRO-3 checkpoint shards"
    final = run_dir / "final" / "model.safetensors"
    if final.exists():
        with safe_open(str(final), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32"}, final  # noqa: SIM118 (not iterable)


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


def launcher_tree(pid: int) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """The `deepspeed` runner's launch.py and rank processes under `pid`, as (launchers, ranks). Short-lived
    children (a rank's curl reading remote shards) may exit or be a zombie while the tree is walked: skipped."""
    launchers, ranks = [], []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            args = proc.cmdline()
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
        if any(a.startswith("--local_rank") for a in args):
            ranks.append(proc)
        elif "deepspeed.launcher.launch" in args:
            launchers.append(proc)
    return launchers, ranks
