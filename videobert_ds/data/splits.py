"""One split of a shard dir read in order, every sample once (no shuffling, no dropped tail): what evaluation
and label discovery read, as opposed to the training loader's shuffled, rank-balanced epochs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from videobert_ds.data.loader import read_shard_manifest, split_shards
from videobert_ds.data.sampling import RawSample, read_shards


def split_meta(shard_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """The json of every sample of a split, in manifest order (video bytes are read but never decoded)."""
    shards = split_shards(shard_dir, read_shard_manifest(shard_dir), split)
    return [json.loads(s["json"]) for s in read_shards(shards)]


def rank_samples(
    shard_dir: str | Path,
    split: str,
    rank: int,
    world_size: int,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> Iterator[RawSample]:
    """This rank's samples of the split: those with index % world_size == rank (all of them, no tail dropped);
    with `keep`, only the samples whose json it accepts (filtered before the ranks' split, so before decoding)."""
    shards = split_shards(shard_dir, read_shard_manifest(shard_dir), split)
    samples = read_shards(shards)
    if keep is not None:
        samples = (s for s in samples if keep(json.loads(s["json"])))
    return islice(samples, rank, None, world_size)
