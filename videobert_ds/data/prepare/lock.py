"""One prepare run per output dir: an exclusive lock on ``OUT/.prepare.lock`` (which names its holder), and partial
dirs that record their writer so a later run removes only those whose writer is gone.

The lock is ``flock``: the kernel releases it when its holder dies (even by SIGKILL), so a stale lock file never
blocks a run; the pid inside is only there to name the holder in the error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from videobert_ds.data.prepare.options import PROG, PrepareError

__all__ = ["LOCK_NAME", "OWNER_NAME", "OutputLock", "mark_partial", "remove_stale_partials", "writer_gone"]

LOCK_NAME = ".prepare.lock"
OWNER_NAME = "writer.json"  # inside a .partial-* dir: who writes it
PARTIAL_GLOB = ".partial-*"

log = logging.getLogger("videobert_ds.data.prepare")

# The fds of the locks this process holds. A forked child (the per-video worker) inherits them, and an flock lasts
# while any fd of its open file holds it: the child closes its copies, so only this process holds the lock.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0], starttime fields[19]
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is gone, only not reaped yet


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


class OutputLock:
    """An exclusive, non-blocking lock on ``out/.prepare.lock``, held from before the output is checked until the
    corpus is published. A second run fails at once with one line naming the holder."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").split()
                os.close(fd)
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "pid unknown"
                raise PrepareError(
                    f"output {self.path.parent} is in use by another {PROG} run ({who}); "
                    "wait for it to finish or choose another --out"
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                # A file system without flock (e.g. Lustre mounted without it): run unguarded, say so.
                os.close(fd)
                log.warning(
                    f"{PROG}: warning: cannot lock {self.path} ({e.strerror}): "
                    "a second run into the same --out would not be detected"
                )
                return
            try:  # the holder may have unlinked the file between our open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no run can be locking a file about to vanish)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None


def mark_partial(partial: Path) -> None:
    """Create ``partial`` and record this process as its writer (pid, host, start time)."""
    partial = Path(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    owner = {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid)}
    # Made under a name no cleaner matches, then renamed: a partial dir never exists without its writer record.
    staging = partial.parent / f".{partial.name}.{pid}.tmp"
    staging.mkdir()
    (staging / OWNER_NAME).write_text(json.dumps(owner) + "\n")
    os.rename(staging, partial)


def writer_gone(partial: Path) -> bool | None:
    """True when the process that wrote ``partial`` has exited, False while it runs, None when this host cannot tell
    (it ran on another host). A partial dir without a writer record is from an older version: gone."""
    try:
        owner = json.loads((Path(partial) / OWNER_NAME).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):  # half-written by a writer killed at once
        return True
    if host != socket.gethostname():
        return None
    if Path("/proc/self/stat").exists():
        start = _start_time(pid)
        return start is None or (owner.get("start") is not None and start != owner["start"])
    return not _pid_alive(pid)


def remove_stale_partials(out: Path, keep: Path | None = None) -> None:
    """Remove the ``.partial-*`` dirs under ``out`` whose writer is gone (runs that were killed); a dir whose writer
    runs, or runs on another host, is kept (the latter with a warning)."""
    for partial in sorted(Path(out).glob(PARTIAL_GLOB)):
        if keep is not None and partial == keep:
            continue
        gone = writer_gone(partial)
        if gone:
            shutil.rmtree(partial, ignore_errors=True)
        elif gone is None:
            log.warning(
                f"{PROG}: warning: kept {partial}: written by a process on another host; "
                "remove it by hand once that run is gone"
            )
