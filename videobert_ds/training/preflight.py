"""Checks that need the world size, so they run once the process group is joined and before any rank trains.
(The checks that need only the files run earlier, in core.config.)"""

from __future__ import annotations

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.data.loader import read_shard_manifest, split_shards
from videobert_ds.data.sampling import steps_per_epoch


def check_train_split(cfg: StageConfig, batch_size: int, world_size: int) -> None:
    """The training split must give every rank at least one full batch (the loaders drop a ragged tail)."""
    try:
        shards = split_shards(cfg.data.shards, read_shard_manifest(cfg.data.shards), cfg.data.train_split)
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.train_split: {err}") from None
    counts = [s.num_samples for s in shards]
    if steps_per_epoch(counts, world_size, batch_size) == 0:
        raise ConfigError(
            f"data.train_split: {cfg.data.train_split!r} of {cfg.data.shards} has {sum(counts)} samples "
            f"in {len(counts)} shard(s): too few for {world_size} rank(s) x batch size {batch_size}"
        )
