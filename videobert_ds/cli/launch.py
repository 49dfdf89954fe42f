"""From a SLURM or MPI launch to the torch.distributed environment, and DeepSpeed hostfiles.

    python -m videobert_ds.cli.launch exec -- CMD ...   run CMD with RANK, WORLD_SIZE, ... set (one srun task per GPU)
    python -m videobert_ds.cli.launch env               print that mapping as `export K=V` lines
    python -m videobert_ds.cli.launch hostfile [--out FILE] [--slots N]
                                                    DeepSpeed hostfile of this allocation (`deepspeed --hostfile`)

Where the mapping comes from, first match wins:

1. an MPI launcher (`mpirun`): OMPI_COMM_WORLD_* (Open MPI) or PMI_RANK/PMI_SIZE (MPICH Hydra).
   With MASTER_ADDR given (or VIDEOBERT_MASTER_ADDR) every variable is filled in; without it nothing is
   set and DeepSpeed's MPI discovery (mpi4py, `hostname -I` of rank 0) takes over.
2. an srun task (SLURM_STEP_ID set): RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID,
   WORLD_SIZE = SLURM_STEP_NUM_TASKS, MASTER_ADDR = first node of the step's nodelist
   (`scontrol show hostnames`), MASTER_PORT = 10000 + job id mod 20000 (below the ephemeral
   port range, so it is free; the same for every task and for a requeued run).
3. anything else (a batch script or a shell): one process, rank 0 of 1.

A MASTER_ADDR / MASTER_PORT inherited from the submitting shell is ignored under srun (sbatch exports
the whole environment, and a stale value there would point every job at one host); set
VIDEOBERT_MASTER_ADDR / VIDEOBERT_MASTER_PORT to force them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PROG = "videobert-launch"
PORT_BASE, PORT_SPAN = 10000, 20000
DEFAULT_PORT = 29500


class LaunchError(RuntimeError):
    """A launch environment we cannot map; printed as one line."""


# ---------------------------------------------------------------------------------------------
# SLURM hostlists and task counts
# ---------------------------------------------------------------------------------------------


def _split_top(expr: str) -> list[str]:
    """Split at commas outside brackets: 'a[1-2,4],b' -> ['a[1-2,4]', 'b']."""
    parts, depth, cur = [], 0, []
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"bad hostlist {expr!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise LaunchError(f"bad hostlist {expr!r}: unbalanced '['")
    parts.append("".join(cur))
    return [p for p in parts if p]


def _expand_range(body: str, expr: str) -> list[str]:
    out = []
    for item in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise LaunchError(f"bad hostlist {expr!r}: range {item!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        width = len(lo)  # zero padding as written: n[01-10]
        if int(hi) < int(lo):
            raise LaunchError(f"bad hostlist {expr!r}: range {item!r} runs backwards")
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_hostlist(expr: str) -> list[str]:
    """SLURM hostlist syntax in pure Python (for containers without `scontrol`): 'gpu[01-03,7],login1',
    also several ranges in one name ('r[1-2]n[1-2]')."""
    hosts: list[str] = []
    for part in _split_top(expr.strip()):
        pieces = re.split(r"(\[[^\]]*\])", part)
        choices = [_expand_range(p[1:-1], expr) if p.startswith("[") else [p] for p in pieces if p]
        hosts += ["".join(c) for c in itertools.product(*choices)]
    return hosts


def hostnames(expr: str) -> list[str]:
    """Expand a nodelist with `scontrol show hostnames` (local, no controller call); pure Python without it."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run(
                [scontrol, "show", "hostnames", expr], capture_output=True, text=True, timeout=30, check=True
            ).stdout.split()
            if out:
                return out
        except (subprocess.SubprocessError, OSError):
            pass
    return expand_hostlist(expr)


def expand_counts(spec: str) -> list[int]:
    """SLURM's per-node counts: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise LaunchError(f"bad per-node count list {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def master_port(job_id: str | int) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


# ---------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise LaunchError(f"{name}={env.get(name)!r} is not an integer") from None


def _visible_local_rank(local_rank: int, env: Mapping[str, str]) -> int:
    """LOCAL_RANK indexes the GPUs this task can see. With --gpus-per-task (or --gpu-bind) each task
    sees only its own GPU(s), so SLURM_LOCALID would point past them."""
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and local_rank >= len(visible):
        return local_rank % len(visible)
    return local_rank


def _mpi_env(env: Mapping[str, str]) -> dict[str, str] | None:
    if "OMPI_COMM_WORLD_RANK" in env:
        rank, size = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0))
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        rank, size = _int(env, "PMI_RANK"), _int(env, "PMI_SIZE")
        local = int(env.get("MPI_LOCALRANKID", env.get("SLURM_LOCALID", 0)))
    else:
        return None
    addr = env.get("VIDEOBERT_MASTER_ADDR") or env.get("MASTER_ADDR")
    if not addr:
        return {}  # DeepSpeed's MPI discovery fills everything in
    port = (
        env.get("VIDEOBERT_MASTER_PORT")
        or env.get("MASTER_PORT")
        or (str(master_port(env["SLURM_JOB_ID"])) if "SLURM_JOB_ID" in env else str(DEFAULT_PORT))
    )
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(_visible_local_rank(local, env)),
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
    }


def _slurm_env(env: Mapping[str, str]) -> dict[str, str]:
    rank = _int(env, "SLURM_PROCID")
    world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
    local = _int(env, "SLURM_LOCALID")
    if not 0 <= rank < world:
        raise LaunchError(f"SLURM_PROCID {rank} outside 0..{world - 1}")
    addr = env.get("VIDEOBERT_MASTER_ADDR")
    if not addr:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise LaunchError("neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set")
        addr = hostnames(nodelist)[0]
    port = env.get("VIDEOBERT_MASTER_PORT") or str(master_port(_int(env, "SLURM_JOB_ID")))
    out = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(_visible_local_rank(local, env)),
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
    }
    node = env.get("SLURM_NODEID")
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if node is not None and per_node:
        counts = expand_counts(per_node)
        if int(node) < len(counts):
            out["LOCAL_WORLD_SIZE"] = str(counts[int(node)])
        out["NODE_RANK"] = node
    return out


def dist_env(env: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(source, variables to set): source is 'mpi', 'mpi-discovery', 'slurm' or 'single'."""
    env = os.environ if env is None else env
    in_step = "SLURM_STEP_ID" in env and "SLURM_PROCID" in env
    # srun --mpi=pmi2 also sets PMI_RANK/PMI_SIZE (equal to SLURM's); MPICH's mpiexec inside an
    # allocation starts its proxies with srun, and there the MPI world differs from the step's tasks.
    srun_is_mpi = in_step and env.get("PMI_SIZE", env.get("SLURM_STEP_NUM_TASKS")) != env.get("SLURM_STEP_NUM_TASKS")
    if "OMPI_COMM_WORLD_RANK" in env or srun_is_mpi or not in_step:
        mpi = _mpi_env(env)
        if mpi is not None:
            return ("mpi" if mpi else "mpi-discovery"), mpi
    if in_step:
        return "slurm", _slurm_env(env)
    port = (
        env.get("VIDEOBERT_MASTER_PORT")
        or env.get("MASTER_PORT")
        or (str(master_port(env["SLURM_JOB_ID"])) if "SLURM_JOB_ID" in env else str(DEFAULT_PORT))
    )
    return "single", {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": env.get("VIDEOBERT_MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1",
        "MASTER_PORT": port,
    }


def describe(source: str, variables: Mapping[str, str], env: Mapping[str, str]) -> str:
    if source == "mpi-discovery":
        return "MPI launch without MASTER_ADDR: DeepSpeed's MPI discovery sets the rank variables"
    where = env.get("SLURMD_NODENAME") or os.uname().nodename
    job = f" (slurm job {env['SLURM_JOB_ID']} step {env.get('SLURM_STEP_ID', '-')})" if "SLURM_JOB_ID" in env else ""
    return (
        f"{source}: rank {variables['RANK']}/{variables['WORLD_SIZE']} local_rank {variables['LOCAL_RANK']} "
        f"on {where}{job}, master {variables['MASTER_ADDR']}:{variables['MASTER_PORT']}"
    )


# ---------------------------------------------------------------------------------------------
# DeepSpeed hostfile
# ---------------------------------------------------------------------------------------------


def _gpu_count(spec: str) -> int | None:
    """'8', 'gpu:8', 'a100:8', 'gpu:a100:8' -> 8 (SLURM_GPUS_PER_NODE / SLURM_GPUS_ON_NODE)."""
    tail = spec.strip().split(",")[0].split(":")[-1]
    return int(tail) if tail.isdigit() else None


def hostfile_lines(env: Mapping[str, str] | None = None, slots: int | None = None) -> list[str]:
    """`host slots=N` per node of the job: N = --slots, else GPUs per node, else tasks per node."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("not inside a SLURM allocation (no SLURM_JOB_NODELIST); run it under sbatch or salloc")
    nodes = hostnames(nodelist)
    if slots is not None:
        per_node = [slots] * len(nodes)
    else:
        gpus = None
        for var in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
            if env.get(var):
                gpus = _gpu_count(env[var])
                if gpus:
                    break
        if gpus:
            per_node = [gpus] * len(nodes)
        elif env.get("SLURM_TASKS_PER_NODE"):
            per_node = expand_counts(env["SLURM_TASKS_PER_NODE"])
        else:
            per_node = [1] * len(nodes)
    if len(per_node) != len(nodes):
        raise LaunchError(f"{len(nodes)} nodes in {nodelist} but {len(per_node)} per-node counts")
    return [f"{host} slots={n}" for host, n in zip(nodes, per_node)]


def write_hostfile(path: Path, env: Mapping[str, str] | None = None, slots: int | None = None) -> Path:
    lines = hostfile_lines(env, slots)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Map SLURM / MPI launches to torch.distributed; DeepSpeed hostfiles."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print the mapped variables as export lines")
    ex = sub.add_parser("exec", help="run a command with the mapped variables")
    ex.add_argument("-q", "--quiet", action="store_true", help="no one-line summary on stderr")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    hf = sub.add_parser("hostfile", help="write a DeepSpeed hostfile for this SLURM allocation")
    hf.add_argument("--out", type=Path, default=None, help="file to write (default: print it)")
    hf.add_argument("--slots", type=int, default=None, help="slots per node (default: GPUs, else tasks per node)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "hostfile":
            if args.out is None:
                print("\n".join(hostfile_lines(slots=args.slots)))
            else:
                write_hostfile(args.out, slots=args.slots)
                print(f"{PROG}: wrote {args.out}", file=sys.stderr)
            return 0
        source, variables = dist_env()
        if args.cmd == "env":
            for k, v in variables.items():
                print(f"export {k}={v}")
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise LaunchError("exec needs a command: exec -- CMD [ARGS...]")
        env = dict(os.environ)
        env.update(variables)
        if not args.quiet:
            print(f"[launch] {describe(source, variables, os.environ)}", file=sys.stderr, flush=True)
        try:
            os.execvpe(command[0], command, env)
        except OSError as err:
            raise LaunchError(f"cannot run {command[0]}: {err.strerror}") from None
    except LaunchError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
