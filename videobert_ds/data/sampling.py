"""The per-epoch sample plan: which samples each rank reads, in which order.

Everything here is a pure function of (manifest, seed, epoch, rank, world size), so every rank
computes the same plan without talking to the others, and a resumed job can replay the stream
of encoded samples up to where it stopped without decoding anything.

Per epoch:
  * the split's shards are shuffled with (seed, epoch);
  * if there are at least as many shards as ranks, shards go round-robin to ranks; otherwise
    every rank reads all shards and keeps the samples with ``index % world_size == rank``;
  * within a rank, a shuffle buffer seeded by (seed, epoch, rank) reorders the samples;
  * every rank yields exactly ``steps_per_epoch * batch_size`` samples. The rest of the rank's
    samples that epoch (the "dropped tail", whatever is left in the shuffle buffer) are skipped,
    so all ranks take the same number of steps (ZeRO-3 hangs otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

# Sample dicts as the webdataset library yields them: "__key__", "json" bytes, "webm"/"mp4" bytes.
RawSample = dict[str, Any]


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard of a split, with its sample count from manifest.json."""

    path: Path
    num_samples: int


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch."""

    epoch: int
    rank: int
    world_size: int
    shards: tuple[ShardInfo, ...]  # read in this order
    keep_every: int  # keep samples with index % keep_every == keep_offset (1/0 when shards are split)
    keep_offset: int
    num_samples: int  # exactly steps_per_epoch * batch_size


def steps_per_epoch(shard_counts: Sequence[int], world_size: int, batch_size: int) -> int:
    """Batches per rank per epoch, the same for every rank and every epoch, from shard counts alone.

    With round-robin shards the rank sizes depend on the epoch's shuffle, so take the worst case
    over all shuffles: the rank with the fewest shards, getting the smallest ones.
    """
    if world_size < 1 or batch_size < 1:
        raise ValueError(f"world_size and batch_size must be >= 1, got {world_size} and {batch_size}")
    n = len(shard_counts)
    if n >= world_size:
        fewest = n // world_size
        worst = sum(sorted(shard_counts)[:fewest])
    else:
        worst = sum(shard_counts) // world_size  # rank world_size-1 keeps the fewest indices
    return worst // batch_size


def shard_order(shards: Sequence[ShardInfo], *, seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    """The epoch's shard order, identical on every rank."""
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in perm]
    return order


def plan_epoch(
    shards: Sequence[ShardInfo],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
) -> EpochPlan:
    """The plan of one rank for one epoch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    order = shard_order(shards, seed=seed, epoch=epoch, shuffle=shuffle)
    steps = steps_per_epoch([s.num_samples for s in shards], world_size, batch_size)
    if len(order) >= world_size:
        mine, every, offset = tuple(order[rank::world_size]), 1, 0
    else:
        mine, every, offset = tuple(order), world_size, rank
    return EpochPlan(epoch, rank, world_size, mine, every, offset, steps * batch_size)


def read_shards(shards: Sequence[ShardInfo]) -> Iterator[RawSample]:
    """Samples of the shards in order, read by the webdataset library; checks manifest counts."""
    for shard in shards:
        pipeline = wds.DataPipeline(wds.SimpleShardList([str(shard.path)]), wds.tarfile_to_samples())
        n = 0
        for sample in pipeline:
            n += 1
            yield sample
        if n != shard.num_samples:
            raise RuntimeError(f"{shard.path} holds {n} samples but manifest.json says {shard.num_samples}")


def shuffle_buffer(samples: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """A seeded shuffle buffer: deterministic given the input order and the generator state."""
    buf: list[RawSample] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        j = int(rng.integers(len(buf)))
        yield buf[j]
        buf[j] = sample
    for j in rng.permutation(len(buf)):
        yield buf[j]


def epoch_samples(plan: EpochPlan, *, seed: int, shuffle: bool, buffer_size: int) -> Iterator[RawSample]:
    """Exactly plan.num_samples encoded samples of one rank for one epoch, in training order."""
    stream: Iterator[RawSample] = read_shards(plan.shards)
    if plan.keep_every > 1:
        stream = islice(stream, plan.keep_offset, None, plan.keep_every)
    if shuffle and buffer_size > 1:
        rng = np.random.default_rng([seed, plan.epoch, plan.rank, 1])
        stream = shuffle_buffer(stream, buffer_size, rng)
    n = 0
    for sample in islice(stream, plan.num_samples):
        n += 1
        yield sample
    if n != plan.num_samples:
        raise RuntimeError(
            f"epoch {plan.epoch} rank {plan.rank}: the shards gave {n} samples, plan needs {plan.num_samples}"
        )


def batch_stream(
    shards: Sequence[ShardInfo],
    *,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
    buffer_size: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
) -> Iterator[list[RawSample]]:
    """Batches of encoded samples from (start_epoch, skip_batches) on, epoch after epoch, forever.

    Skipped batches are read from the tars (the shuffle depends on them) but never decoded.
    """
    epoch = start_epoch
    while True:
        plan = plan_epoch(
            shards, seed=seed, epoch=epoch, rank=rank, world_size=world_size, batch_size=batch_size, shuffle=shuffle
        )
        if plan.num_samples == 0:
            raise ValueError(
                f"{sum(s.num_samples for s in shards)} samples are too few for "
                f"{world_size} rank(s) x batch size {batch_size}"
            )
        samples = epoch_samples(plan, seed=seed, shuffle=shuffle, buffer_size=buffer_size)
        if epoch == start_epoch and skip_batches:
            # read (the shuffle buffer depends on them), never decoded
            for _ in islice(samples, skip_batches * batch_size):
                pass
        while batch := list(islice(samples, batch_size)):
            yield batch
        epoch += 1
