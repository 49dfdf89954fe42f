"""The data position both training loaders share (ClipLoader in loader.py, TokenLoader in tokens.py): an epoch and
the batches delivered in it, saved by state_dict and restored by load_state_dict, so a resumed run reads on exactly
after the last batch the trainer took.

A subclass sets its sample plan (split, seed, rank, world_size, batch_size, shuffle, shuffle_buffer), calls
`_start(steps_per_epoch, total_samples)`, and supplies `_open_stream()`, the batch stream positioned at (epoch,
batches_in_epoch) (`_batch_stream` opens sampling.batch_stream there), and `_emit(item)`: one stream item -> one batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from videobert_ds.data.sampling import RawSample, Sources, batch_stream

BatchT = TypeVar("BatchT")


class EpochPosition(Generic[BatchT]):
    """Deterministic, resumable iteration over `steps_per_epoch` batches an epoch (see the module docstring)."""

    split: str
    seed: int
    rank: int
    world_size: int
    batch_size: int
    shuffle: bool
    shuffle_buffer: int
    steps_per_epoch: int
    _epoch: int
    _batches: int  # delivered to the trainer in this epoch
    _stream: Iterator[Any] | None  # positioned at (_epoch, _batches); None: opened at the next iteration

    def _start(self, steps: int, total: int) -> None:
        """Epoch 0, batch 0, `steps` batches an epoch; a split too small for one step (`total` samples) is a
        one-line ValueError."""
        if steps == 0:
            raise ValueError(
                f"split {self.split!r} has {total} samples: too few for {self.world_size} rank(s) x batch size "
                f"{self.batch_size}"
            )
        self.steps_per_epoch = steps
        self._epoch, self._batches = 0, 0
        self._stream = None

    def _open_stream(self) -> Iterator[Any]:
        raise NotImplementedError

    def _batch_stream(self, shards: Sources, **options: Any) -> Iterator[list[RawSample]]:
        """The plan's batches of `shards` from the current position on (`options`: batch_stream's resampled=,
        policy=, counts=)."""
        return batch_stream(
            shards,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            buffer_size=self.shuffle_buffer,
            start_epoch=self._epoch,
            skip_batches=self._batches,
            **options,
        )

    def _emit(self, item: Any) -> BatchT:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, int]:
        """The data position: batches delivered so far in the current epoch (read-ahead ones excluded)."""
        self._roll_epoch()
        return {"epoch": self._epoch, "batches_in_epoch": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue, at the next iteration, exactly after the batches `state` counts."""
        epoch, batches = int(state["epoch"]), int(state["batches_in_epoch"])
        if epoch < 0 or not 0 <= batches <= self.steps_per_epoch:
            raise ValueError(f"bad loader state {state} for {self.steps_per_epoch} steps per epoch")
        self.close()
        self._epoch, self._batches = epoch, batches
        self._roll_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next iteration."""
        self.load_state_dict({"epoch": epoch, "batches_in_epoch": 0})

    def close(self) -> None:
        """Drop the stream and what it read ahead; the next iteration reopens it at the saved position."""
        self._stream = None

    def _roll_epoch(self) -> None:
        if self._batches >= self.steps_per_epoch:
            self._epoch, self._batches = self._epoch + 1, 0

    def __iter__(self) -> Iterator[BatchT]:
        """The rest of the current epoch; then the epoch advances."""
        self._roll_epoch()
        if self._stream is None:
            self._stream = self._open_stream()
        stream = self._stream
        while self._batches < self.steps_per_epoch:
            item = next(stream)
            self._batches += 1  # counted before the yield: a batch handed over is delivered
            yield self._emit(item)
        self._roll_epoch()
