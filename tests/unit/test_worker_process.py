"""training/worker_process.ForkedWorker, the token-shard reader's process: what keeps it off the rank's core when
the rank wants it (on a GPU node the reader has spare cores; on 2 cores beside 2 ranks its wake-ups cost the step
2-6 ms each), checked on the child itself."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator

import pytest

from videobert_ds.training.worker_process import NICENESS, ForkedWorker


def test_the_child_yields_to_the_rank_and_refills_a_slot_only_once_its_item_is_decoded():
    made = mp.get_context("fork").Value("i", 0)

    def items() -> Iterator[bytes]:
        while True:
            with made.get_lock():
                made.value += 1
            yield str(made.value).encode()

    seen_while_decoding = []

    def decode(data: bytes) -> int:
        # The child makes item n + 1 as soon as it has sent n (on a loaded machine give it time), then the parent
        # sleeps here: a child free to refill would send n + 1 and make n + 2 now.
        deadline = time.monotonic() + 5
        while made.value <= int(data) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        seen_while_decoding.append(made.value)
        return int(data)

    worker = ForkedWorker(items, depth=1, decode=decode)
    try:
        assert [worker.get(), worker.get()] == [1, 2]
        # depth 1: while item n is decoded the child holds item n + 1, made, and waits for the slot to send it; a
        # slot freed before decoding would let it send n + 1 and make n + 2.
        assert seen_while_decoding == [2, 3]
        pid = worker.pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
        if sys.platform == "linux":  # a wake-up (a freed slot) must not preempt the rank
            assert os.sched_getscheduler(pid) == os.SCHED_BATCH
    finally:
        worker.close()
    with pytest.raises(ProcessLookupError):  # closed: the child is killed and reaped
        os.kill(pid, 0)
