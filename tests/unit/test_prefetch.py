"""The trainer's host prefetch: the loader read ahead in a thread that also builds each batch's host-side inputs,
with the loader's order, its resumable position (read-ahead not counted) and per-position draws."""

from __future__ import annotations

import threading
from itertools import islice

import pytest
import torch

from videobert_ds.data.loader import build_clip_loader
from videobert_ds.training.loaders import HostPrefetch, batch_generator

KW = dict(seed=3, rank=0, world_size=1, batch_size=2, backend="pyav", shuffle_buffer=4)


def keys(batch) -> list[str]:
    return [m["__key__"] for m in batch.meta]


def prepare(batch, generator: torch.Generator):
    """A host-side builder as a stage's: reads only the batch's host metadata and draws only from `generator`."""
    return {"keys": keys(batch), "draw": torch.rand(4, generator=generator), "thread": threading.current_thread()}


def test_prefetch_keeps_order_position_and_draws_across_a_resume(prepared_shards):
    plain = build_clip_loader(prepared_shards, "train", num_frames=8, **KW)
    steps = plain.steps_per_epoch
    n = steps + steps // 2 + 1  # into the second epoch
    expected = [keys(b) for b in islice((b for _ in range(2) for b in plain), n)]

    first = HostPrefetch(build_clip_loader(prepared_shards, "train", num_frames=8, **KW), prepare, 2, 7, 0)
    k = steps // 2 + 1
    taken = [next(first) for _ in range(k)]
    for b in taken:
        assert b.host["keys"] == keys(b) and b.host["thread"] is not threading.main_thread()
    # Batches read ahead by the thread are not counted in the position a checkpoint stores.
    state = first.state_dict()
    assert state == {"epoch": 0, "batches_in_epoch": k}
    # Each batch's draws are a function of (seed, rank, data position) only.
    g = batch_generator(7, 0, {"epoch": 0, "batches_in_epoch": 1})  # the first batch's position after it
    assert torch.equal(taken[0].host["draw"], torch.rand(4, generator=g))
    first.close()
    assert first.state_dict() == state

    resumed = HostPrefetch(build_clip_loader(prepared_shards, "train", num_frames=8, **KW), prepare, 2, 7, 0)
    resumed.load_state_dict(state)
    rest = [next(resumed) for _ in range(n - k)]
    assert [keys(b) for b in taken + rest] == expected
    # An uninterrupted run draws the same for the same batches.
    again = HostPrefetch(build_clip_loader(prepared_shards, "train", num_frames=8, **KW), prepare, 3, 7, 0)
    straight = [next(again) for _ in range(n)]
    for a, b in zip(straight, taken + rest):
        assert torch.equal(a.host["draw"], b.host["draw"])
    assert not torch.equal(straight[0].host["draw"], straight[1].host["draw"])
    again.close()
    resumed.close()


def test_a_failure_in_the_thread_is_raised_by_next(prepared_shards):
    def broken(batch, generator):
        raise ValueError("bad sample")

    batches = HostPrefetch(build_clip_loader(prepared_shards, "train", num_frames=8, **KW), broken, 2, 0, 0)
    with pytest.raises(ValueError, match="bad sample"):
        next(batches)
