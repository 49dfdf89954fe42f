"""A clean stop before the scheduler's kill: SIGUSR1 (SLURM's warning before the time limit) or SIGTERM
(preemption) sets a flag; at check steps the ranks agree on it, so every rank checkpoints and stops at the same
step.

A launcher that is gone counts as a SIGTERM too. `kill PID` (or `timeout --foreground`) on the `deepspeed` command
ends that process alone: DeepSpeed's runner forwards nothing on one node, so its `deepspeed.launcher.launch` child
and the ranks would train on, orphaned, still writing the run dir. Each rank therefore records, at start, the
launcher processes above it (launch.py, the `deepspeed` runner, or torchrun; Linux /proc only; none under srun or
mpirun, whose tasks have no such parent) and a daemon thread looks at them every second: once one is gone (or a
zombie, or its pid now names another process) the rank's flag is set, as SIGTERM would, and every rank
checkpoints and stops at the next check step. Should a rank not stop within `VIDEOBERT_ORPHAN_GRACE_S` seconds
after that (default 600: stuck in a collective because a peer died with the launcher, say), the thread ends the
process (exit 143), so no orphan is left behind for good.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from videobert_ds.core.config import ScheduleConfig

log = logging.getLogger(__name__)

ORPHAN_GRACE_ENV = "VIDEOBERT_ORPHAN_GRACE_S"
DEFAULT_ORPHAN_GRACE_S = 600.0
ORPHAN_EXIT_CODE = 128 + signal.SIGTERM


class Proc(NamedTuple):
    """One process, identified across pid reuse by its start time (clock ticks after boot, /proc/PID/stat)."""

    pid: int
    start: int
    role: str  # "launch" (deepspeed.launcher.launch), "runner" (the deepspeed command) or "torchrun"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live or zombie process from /proc, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces and ')'
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def launcher_role(cmdline: list[str]) -> str | None:
    """Which launcher a command line runs, or None for anything else (a shell, srun's slurmstepd, mpirun's orted)."""
    names = [os.path.basename(a) for a in cmdline[:2]]
    if "deepspeed.launcher.launch" in cmdline:
        return "launch"
    if "deepspeed" in names or "deepspeed.launcher.runner" in cmdline:
        return "runner"
    if "torchrun" in names or "torch.distributed.run" in cmdline:
        return "torchrun"
    return None


def launcher_ancestors(pid: int | None = None) -> list[Proc]:
    """The unbroken chain of launcher processes above `pid` (default: this process), nearest first, up to and
    including the top one (the deepspeed runner or torchrun). Empty off Linux and when the parent is no launcher."""
    chain: list[Proc] = []
    stat = _stat(os.getpid() if pid is None else pid)
    while stat is not None and stat[1] > 1 and len(chain) < 4:
        parent = stat[1]
        role = launcher_role(_cmdline(parent))
        stat = _stat(parent)
        if role is None or stat is None:
            break
        chain.append(Proc(parent, stat[2], role))
        if role in ("runner", "torchrun"):  # the command the user started: nothing above it is ours to watch
            break
    return chain


def gone(proc: Proc) -> bool:
    """True once `proc` has exited: no such pid, a zombie not yet reaped, or the pid reused by another process."""
    stat = _stat(proc.pid)
    return stat is None or stat[0] in ("Z", "X", "x") or stat[2] != proc.start


def orphan_grace_s() -> float:
    """Seconds a rank may take to stop after its launcher is gone before it is ended (env VIDEOBERT_ORPHAN_GRACE_S)."""
    raw = os.environ.get(ORPHAN_GRACE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_ORPHAN_GRACE_S
    except ValueError:
        value = DEFAULT_ORPHAN_GRACE_S
    return value if value > 0 else DEFAULT_ORPHAN_GRACE_S


class LauncherWatch:
    """Watches `ancestors` from a daemon thread: when one is gone, calls `on_gone(proc)` once, then ends the
    process with ORPHAN_EXIT_CODE if it is still alive `grace_s` seconds later."""

    def __init__(self, ancestors: list[Proc], on_gone: Any, *, grace_s: float, poll_s: float = 1.0) -> None:
        self.ancestors, self.on_gone, self.grace_s, self.poll_s = ancestors, on_gone, grace_s, poll_s
        self.lost: Proc | None = None
        self._thread = threading.Thread(target=self._run, name="launcher-watch", daemon=True)
        if ancestors:
            self._thread.start()

    def _run(self) -> None:
        while self.lost is None:
            time.sleep(self.poll_s)
            self.lost = next((p for p in self.ancestors if gone(p)), None)
        self.on_gone(self.lost)
        time.sleep(self.grace_s)
        print(
            f"[pid {os.getpid()}] the {self.lost.role} launcher (pid {self.lost.pid}) is gone and this rank has not "
            f"stopped within {self.grace_s:g} s ({ORPHAN_GRACE_ENV}): exiting without a checkpoint",
            file=sys.stderr,
            flush=True,
        )
        os._exit(ORPHAN_EXIT_CODE)


class StopFlag:
    """Set by SIGUSR1 or SIGTERM, or when a launcher above this rank is gone; installs its handlers and starts
    the launcher watch when constructed."""

    def __init__(self, sched: ScheduleConfig) -> None:
        self.sched = sched
        self.signal: int | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)
        self.watch = LauncherWatch(launcher_ancestors(), self._launcher_gone, grace_s=orphan_grace_s())

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def _launcher_gone(self, proc: Proc) -> None:
        log.warning(
            "the %s launcher (pid %d) is gone: checkpointing and stopping as on SIGTERM (rank pid %d)",
            proc.role,
            proc.pid,
            os.getpid(),
        )
        if self.signal is None:
            self.signal = int(signal.SIGTERM)

    def should_check(self, step: int) -> bool:
        """Every `signal_check_every` steps, and at log steps (which sync the host anyway)."""
        return step % self.sched.log_every == 0 or step % self.sched.signal_check_every == 0

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (one tiny all-reduce; call at check steps only). A rank
        stopping for another's signal takes that signal's number as its own, so every rank's log names it."""
        flag = torch.tensor([float(self.signal or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())
