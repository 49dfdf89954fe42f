"""The clip loaders a training run reads (one split of the run's shards, cut into this rank's micro-batches) and
the optional log of which samples each step consumed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from videobert_ds.core.config import StageConfig
from videobert_ds.core.distributed import DistEnv
from videobert_ds.data.loader import ClipLoader, build_clip_loader


def build_split_loader(cfg: StageConfig, split: str, batch_size: int, env: DistEnv, shuffle: bool) -> ClipLoader:
    """This rank's loader over `split`; raises ValueError when the shards have no such split."""
    d = cfg.data
    return build_clip_loader(
        d.shards,
        split,
        batch_size,
        d.num_frames,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.run.seed,
        shuffle=shuffle,
        backend=d.backend,
        device=env.device,
        num_threads=d.num_threads,
        prefetch=d.prefetch,
        shuffle_buffer=d.shuffle_buffer,
    )


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """One stream over epochs; the loader's own state tracks epoch and position."""
    while True:
        yield from loader


class SampleKeyLog:
    """The sample keys each step consumed, one JSON line per micro-step in RUN_DIR/samples_rank{r}.jsonl
    (`data.log_sample_keys`: resume audits, none repeated or skipped); does nothing when disabled."""

    def __init__(self, run_dir: Path, rank: int, enabled: bool) -> None:
        # Open for the whole run (line-buffered: a killed run keeps every line written so far).
        path = Path(run_dir) / f"samples_rank{rank}.jsonl"
        self.file = open(path, "a", buffering=1) if enabled else None  # noqa: SIM115

    def write(self, step: int, batch: Any) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"step": step, "keys": [m["__key__"] for m in batch.meta]}) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
