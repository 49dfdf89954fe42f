"""One video at a time under a wall-clock limit: ``process_video`` runs in a forked worker process that the rank kills
when a video takes longer than ``PrepareOptions.video_timeout`` (a decoder stuck inside one C call cannot be
interrupted from Python; a process can always be killed). A worker that crashes (e.g. a segfault in a codec) costs
that video only, not the rank. ``video_timeout`` 0 runs the videos in the rank's own process, without a limit.

The worker is forked, not spawned: it starts in milliseconds with everything already imported, and a new one after
a timeout costs no start-up either.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
from typing import Any

from videobert_ds.data.prepare.entries import Entry, Skip
from videobert_ds.data.prepare.options import PrepareOptions
from videobert_ds.data.prepare.video import VideoResult, process_video

__all__ = ["VideoRunner", "guarded_process_video"]


def guarded_process_video(entry: Entry, opts: PrepareOptions) -> VideoResult:
    """``process_video``, with an unforeseen exception turned into a ``video_error`` skip (it must not end the run)."""
    try:
        return process_video(entry, opts)
    except Exception as e:  # noqa: BLE001 - an input nobody foresaw must not end the run
        return VideoResult(skip=_skip(entry, "video_error", f"{type(e).__name__}: {e}"))


def _skip(entry: Entry, reason: str, detail: str) -> Skip:
    return Skip(entry.line, reason, detail, entry.id, str(entry.raw.get("video", entry.video)))


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the rank that forked it dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(conn: Any) -> None:
    """The worker's loop: (entry, opts) in, VideoResult out, until the rank closes its end."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the rank's to handle; it ends the worker itself
    while True:
        try:
            entry, opts = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(guarded_process_video(entry, opts))


class VideoRunner:
    """Runs ``process_video`` for one rank, each video under ``timeout`` seconds (0: in this process, no limit)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = float(timeout)
        self._proc: Any = None
        self._conn: Any = None

    def __enter__(self) -> VideoRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), name="videobert-prepare-video", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def _stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            self._conn.close()
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._proc = self._conn = None

    def process(self, entry: Entry, opts: PrepareOptions) -> VideoResult:
        """The video's result; a ``video_timeout`` skip when it ran out of time, ``video_error`` when the worker
        died under it (a new worker takes the next video)."""
        if self.timeout <= 0:
            return guarded_process_video(entry, opts)
        if self._proc is None:
            self._start()
        try:
            self._conn.send((entry, opts))
            ready = self._conn.poll(self.timeout)
            result = self._conn.recv() if ready else None
        except (EOFError, OSError):  # the worker died (a crash in a codec, killed by the OOM killer, ...)
            self._proc.join()
            code = self._proc.exitcode
            self._stop()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return VideoResult(skip=_skip(entry, "video_error", f"the video's worker process died ({how})"))
        if result is None:
            self._stop()
            return VideoResult(
                skip=_skip(entry, "video_timeout", f"not done after {self.timeout:g} s (video_timeout): killed")
            )
        return result

    def close(self) -> None:
        self._stop()
