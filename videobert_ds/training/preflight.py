"""Checks that need the world size, so they run once the process group is joined and before any rank trains.
(The checks that need only the files run earlier, in core.config.)"""

from __future__ import annotations

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.data.loader import resolve_sources
from videobert_ds.data.sampling import planned_counts, steps_per_epoch


def check_train_split(cfg: StageConfig, batch_size: int, world_size: int) -> None:
    """The training split must give every rank at least one full batch (the loaders drop a ragged tail)."""
    try:
        _, sources = resolve_sources(cfg.data.shard_sources(), cfg.data.train_split)
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.train_split: {err}") from None
    counts = planned_counts(sources)
    if steps_per_epoch(counts, world_size, batch_size) == 0:
        raise ConfigError(
            f"data.train_split: {cfg.data.train_split!r} of {cfg.data.shards} has {sum(counts)} samples "
            f"in {len(counts)} shard(s): too few for {world_size} rank(s) x batch size {batch_size}"
        )
