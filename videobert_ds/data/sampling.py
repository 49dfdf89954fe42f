"""The per-epoch sample plan: which samples each rank reads, in which order.

Everything here is a pure function of (sources' manifests, seed, epoch, rank, world size), so every rank
computes the same plan without talking to the others, and a resumed job can replay the stream of encoded
samples up to where it stopped without decoding anything.

Per epoch:
  * the epoch's shard list: every source's shards, each repeated by its weight (open_clip's upsampling factors):
    a weight of 2.5 lists every shard twice plus half of them drawn with (seed, epoch, source); one source of
    weight 1 is its shards once;
  * epoch mode: the list is shuffled with (seed, epoch); if there are at least as many shards as ranks, shards go
    round-robin to ranks; otherwise every rank reads all shards and keeps the samples with
    ``index % world_size == rank``;
  * resampled mode: each rank draws shards with replacement, each with its source's weight, from a generator
    seeded by (seed, epoch, rank) until it holds the epoch's samples;
  * within a rank, a shuffle buffer seeded by (seed, epoch, rank) reorders the samples;
  * every rank yields exactly ``steps_per_epoch * batch_size`` samples, the same number in both modes. The rest of
    the rank's samples that epoch (the "dropped tail", whatever is left in the shuffle buffer) are skipped, so all
    ranks take the same number of steps (ZeRO-3 hangs otherwise). Samples skipped by ``on_error="skip"``
    (sources.py) are made up by reading the rank's shards again (another shuffle), so the count holds then too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from videobert_ds.data.sources import RawSample, ReadPolicy, ShardInfo, SkipCounts, read_shards_ahead

__all__ = [
    "EpochPlan",
    "RawSample",
    "ShardInfo",
    "Source",
    "batch_stream",
    "epoch_samples",
    "epoch_shards",
    "plan_epoch",
    "planned_counts",
    "read_shards",
    "shard_order",
    "shuffle_buffer",
    "steps_per_epoch",
]


@dataclass(frozen=True)
class Source:
    """One source's shards of a split and its weight (upsampling factor: shards per epoch per shard)."""

    shards: tuple[ShardInfo, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"a source's weight must be > 0, got {self.weight}")


Sources = Sequence[Source] | Sequence[ShardInfo]


def as_sources(shards: Sources) -> tuple[Source, ...]:
    """Sources as given, or one source of weight 1 for a plain shard list."""
    items = tuple(shards)
    if items and all(isinstance(s, Source) for s in items):
        return items  # type: ignore[return-value]
    return (Source(items),)  # type: ignore[arg-type]


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


def _whole_and_extra(source: Source) -> tuple[int, int]:
    """(times every shard is listed, shards drawn once more) per epoch for a source's weight."""
    whole = int(source.weight)
    return whole, int(round((source.weight - whole) * len(source.shards)))


def planned_counts(shards: Sources) -> list[int]:
    """Sample counts of an epoch's shard list in the worst case (a fractional weight drawing a source's smallest
    shards): steps_per_epoch over these holds for every epoch's actual list, which is at least as large shard by
    shard once sorted."""
    counts: list[int] = []
    for src in as_sources(shards):
        whole, extra = _whole_and_extra(src)
        own = [s.num_samples for s in src.shards]
        counts += own * whole + sorted(own)[:extra]
    return counts


def epoch_shards(shards: Sources, *, seed: int, epoch: int) -> list[ShardInfo]:
    """The epoch's shard list before the shuffle: each source's shards repeated by its weight."""
    out: list[ShardInfo] = []
    for i, src in enumerate(as_sources(shards)):
        whole, extra = _whole_and_extra(src)
        out += list(src.shards) * whole
        if extra:
            pick = np.random.default_rng([seed, epoch, 2, i]).choice(len(src.shards), extra, replace=False)
            out += [src.shards[j] for j in sorted(pick)]
    return out


def shard_order(shards: Sequence[ShardInfo], *, seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    """The epoch's shard order, identical on every rank."""
    order = list(shards)
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(len(order))
        order = [order[i] for i in perm]
    return order


def _resample(sources: tuple[Source, ...], need: int, *, seed: int, epoch: int, rank: int) -> tuple[ShardInfo, ...]:
    """Shards drawn with replacement (each with its source's weight) until they hold `need` samples."""
    pool = [s for src in sources for s in src.shards]
    weights = np.array([src.weight for src in sources for _ in src.shards], dtype=np.float64)
    counts = np.array([s.num_samples for s in pool])
    if need <= 0 or not counts.sum():
        return ()
    rng = np.random.default_rng([seed, epoch, rank, 3])
    drawn: list[int] = []
    held = 0
    mean = max(float(counts @ weights / weights.sum()), 1.0)
    while held < need:
        chunk = rng.choice(len(pool), size=int((need - held) / mean) + 4, p=weights / weights.sum())
        for j in chunk:
            drawn.append(int(j))
            held += int(counts[j])
            if held >= need:
                break
    return tuple(pool[j] for j in drawn)


def plan_epoch(
    shards: Sources,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
    resampled: bool = False,
) -> EpochPlan:
    """The plan of one rank for one epoch (`shards`: one shard list, or weighted Sources)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    sources = as_sources(shards)
    steps = steps_per_epoch(planned_counts(sources), world_size, batch_size)
    if resampled:
        drawn = _resample(sources, steps * batch_size, seed=seed, epoch=epoch, rank=rank)
        return EpochPlan(epoch, rank, world_size, drawn, 1, 0, steps * batch_size)
    order = shard_order(epoch_shards(sources, seed=seed, epoch=epoch), seed=seed, epoch=epoch, shuffle=shuffle)
    if len(order) >= world_size:
        mine, every, offset = tuple(order[rank::world_size]), 1, 0
    else:
        mine, every, offset = tuple(order), world_size, rank
    return EpochPlan(epoch, rank, world_size, mine, every, offset, steps * batch_size)


def read_shards(
    shards: Sequence[ShardInfo], policy: ReadPolicy | None = None, counts: SkipCounts | None = None
) -> Iterator[RawSample]:
    """Samples of the shards in order, read by the webdataset library (sources.read_shard: local paths or URLs,
    retried, checked against the manifest counts; `policy` says what a bad shard or sample does)."""
    return read_shards_ahead(list(shards), policy or ReadPolicy(), counts)


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


def epoch_samples(
    plan: EpochPlan,
    *,
    seed: int,
    shuffle: bool,
    buffer_size: int,
    policy: ReadPolicy | None = None,
    counts: SkipCounts | None = None,
) -> Iterator[RawSample]:
    """Exactly plan.num_samples encoded samples of one rank for one epoch, in training order. With
    on_error="skip", samples skipped on the way are made up by another pass over the same shards."""
    policy = policy or ReadPolicy()
    n = 0
    for extra_pass in range(1 << 30):
        # a make-up pass reads the skipped samples again: count them once
        stream: Iterator[RawSample] = read_shards(plan.shards, policy, None if extra_pass else counts)
        if plan.keep_every > 1:
            stream = islice(stream, plan.keep_offset, None, plan.keep_every)
        if shuffle and buffer_size > 1:
            rng = np.random.default_rng([seed, plan.epoch, plan.rank, 1, *([extra_pass] if extra_pass else [])])
            stream = shuffle_buffer(stream, buffer_size, rng)
        got = 0
        for sample in islice(stream, plan.num_samples - n):
            got += 1
            yield sample
        n += got
        if n == plan.num_samples:
            return
        if policy.on_error != "skip" or not got:
            raise RuntimeError(
                f"epoch {plan.epoch} rank {plan.rank}: the shards gave {n} samples, plan needs {plan.num_samples}"
            )


def batch_stream(
    shards: Sources,
    *,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    shuffle: bool,
    buffer_size: int,
    start_epoch: int = 0,
    skip_batches: int = 0,
    resampled: bool = False,
    policy: ReadPolicy | None = None,
    counts: SkipCounts | None = None,
) -> Iterator[list[RawSample]]:
    """Batches of encoded samples from (start_epoch, skip_batches) on, epoch after epoch, forever.

    Skipped batches are read from the tars (the shuffle depends on them) but never decoded.
    """
    epoch = start_epoch
    while True:
        plan = plan_epoch(
            shards,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            shuffle=shuffle,
            resampled=resampled,
        )
        if plan.num_samples == 0:
            total = sum(s.num_samples for src in as_sources(shards) for s in src.shards)
            raise ValueError(f"{total} samples are too few for {world_size} rank(s) x batch size {batch_size}")
        samples = epoch_samples(plan, seed=seed, shuffle=shuffle, buffer_size=buffer_size, policy=policy, counts=counts)
        if epoch == start_epoch and skip_batches:
            # read (the shuffle buffer depends on them), never decoded
            for _ in islice(samples, skip_batches * batch_size):
                pass
        while batch := list(islice(samples, batch_size)):
            yield batch
        epoch += 1
