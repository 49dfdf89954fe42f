"""One forked process that runs an iterator and sends its items (bytes) to the parent through a pipe, at most
`depth` ahead: what the trainer's prefetch uses to read token shards outside the rank's process.

Why not torch's DataLoader with a worker: its parent side hands each request to a multiprocessing.Queue feeder
thread, which then waits for the GIL the training step holds; measured in the tiny teacher, `next` took 0.8 ms at
best and often 3 or 5.5 ms (the 5 ms switch interval), 1.5 % of the step. Here `get` is a poll, a read of the
pipe, the item's decoding and a semaphore post: no thread on the parent side.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch

# The child yields to the rank: it has `depth` batches of slack, the step has none. At the rank's priority, each
# wake-up of the child (a slot freed as a batch is taken) preempted the rank on a machine with no spare core (2 ranks
# on 2 cores): 2-6 ms of the step spent in `next`, though the batch was there. nice 10 gives it a tenth of a busy
# core's share, and SCHED_BATCH (Linux) stops a wake-up from preempting the rank at all: the child runs when the
# rank waits (collectives, the device) or at the next tick. SCHED_IDLE instead starved it (10-20 ms waits).
NICENESS = 10
PIPE_BYTES = 1 << 20

T = TypeVar("T")


class ForkedWorker(Generic[T]):
    """`make_items()` run in a forked child (it inherits everything the parent built: nothing is pickled to start
    it); `get()` returns its items in order, each as `decode(item)`. The child ignores SIGINT, SIGTERM and SIGUSR1
    (the rank decides when to stop; a SLURM signal to every process must not kill the reader first) and exits when
    the parent is gone. `close()` kills it: it only reads, so nothing is lost."""

    def __init__(
        self,
        make_items: Callable[[], Iterator[bytes]],
        depth: int,
        decode: Callable[[bytes], T],
        name: str = "host-prefetch",
    ) -> None:
        self._decode = decode
        ctx = mp.get_context("fork")
        self._inbox, outbox = ctx.Pipe(duplex=False)
        _widen(self._inbox)
        self._slots = ctx.Semaphore(depth)  # items the child may send ahead of the ones taken
        self._process = ctx.Process(
            target=_serve, args=(make_items, outbox, self._slots, os.getpid()), name=name, daemon=True
        )
        self._process.start()
        outbox.close()  # the child's end: the parent holds only its read end, so the child sees the parent go

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def get(self) -> T:
        """The next item, decoded; RuntimeError when the child died without sending it. Its slot is freed only once
        the item is decoded: the child, woken to refill it, then takes its share of the core from the step's own work
        rather than from this hand-off, which the step waits on."""
        while not self._inbox.poll(1.0):
            if not self._process.is_alive():
                raise RuntimeError(
                    f"the {self._process.name} worker process (pid {self._process.pid}) exited with code "
                    f"{self._process.exitcode} before sending the next batch"
                )
        try:
            data = self._inbox.recv_bytes()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(
                f"the {self._process.name} worker process (pid {self._process.pid}) exited with code "
                f"{self._process.exitcode} before sending the next batch"
            ) from None
        item = self._decode(data)
        self._slots.release()
        return item

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._inbox.close()


def _widen(pipe: Any) -> None:
    """Room in the pipe for the items sent ahead (Linux: 64 KB by default, up to fs/pipe-max-size, 1 MB unless
    changed): a token batch is ~60 KB, and a child blocked on a full pipe wakes, and preempts the rank, as the
    rank reads."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or a lower limit: the default pipe works
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _serve(make_items: Callable[[], Iterator[bytes]], outbox: Any, slots: Any, parent: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(1)  # the rank's cores are the step's
    os.nice(NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # not Linux: nice alone
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        for item in make_items():
            while not slots.acquire(timeout=1.0):
                if os.getppid() != parent:
                    return
            outbox.send_bytes(item)
    except (BrokenPipeError, ConnectionResetError):  # the parent closed its end or is gone
        return
