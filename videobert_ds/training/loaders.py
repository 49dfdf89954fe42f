"""The clip loaders a training run reads (one split of the run's shards, cut into this rank's micro-batches), the
background prefetch that builds each batch's host-side inputs ahead of the step, and the optional log of which
samples each step consumed."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videobert_ds.core.config import StageConfig
from videobert_ds.core.distributed import DistEnv
from videobert_ds.data.loader import ClipLoader, build_clip_loader
from videobert_ds.training.worker_process import ForkedWorker


def build_split_loader(
    cfg: StageConfig,
    split: str,
    batch_size: int,
    env: DistEnv,
    shuffle: bool,
    temporal_crop: str | None = None,
    device: torch.device | None = None,
) -> ClipLoader:
    """This rank's loader over `split`; raises ValueError when the shards have no such split. `temporal_crop`
    None: the training loader (shuffled) crops clips as data.temporal_crop says, validation takes the centre.
    `device`: where batches go (default the rank's device; the host for a worker process to build)."""
    d = cfg.data
    # What both loaders take alike: this rank's share of the split, its order, and where batches go.
    plan: dict[str, Any] = {
        "rank": env.rank,
        "world_size": env.world_size,
        "seed": cfg.run.seed,
        "shuffle": shuffle,
        "shuffle_buffer": d.shuffle_buffer,
        "device": device or env.device,
    }
    if d.tokens:  # visual words the tokenize stage computed once (data/tokens.py): no video decoded, no crop
        from videobert_ds.data.tokens import build_token_loader

        return build_token_loader(d.tokens, split, batch_size, d.num_frames, **plan)
    return build_clip_loader(
        d.shard_sources(),  # data.shards, or the weighted data.sources
        split,
        batch_size,
        d.num_frames,
        **plan,
        backend=d.backend,
        num_threads=d.num_threads,
        prefetch=d.prefetch,
        temporal_crop=temporal_crop or (d.temporal_crop if shuffle else "center"),
        resampled=shuffle and d.sampling == "resampled",  # validation reads its split once, in order
        on_error=d.on_error,
        max_skip_share=d.max_skip_share,
        retries=d.read_retries,
        retry_backoff_s=d.retry_backoff_s,
    )


def endless(loader: Iterable[Any]) -> Iterator[Any]:
    """One stream over epochs; the loader's own state tracks epoch and position."""
    while True:
        yield from loader


def batch_generator(seed: int, rank: int, position: dict[str, int]) -> torch.Generator:
    """The CPU generator a batch's host-side draws (masking, sequence kinds, negatives) come from: a function of
    the run seed, the rank and the batch's data position only, so the batch is the same whenever and wherever it
    is built (ahead in a thread, again after a resume)."""
    words = np.random.SeedSequence([seed, rank, position["epoch"], position["batches_in_epoch"]])
    return torch.Generator().manual_seed(int(words.generate_state(1, dtype=np.uint64)[0]))


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class HostPrefetch:
    """The training loader read `depth` batches ahead, in the background, where each batch's host-side inputs
    are built too (`prepare(batch, generator)`: tokenizing, masking draws, layout index arithmetic; its result is
    stored as `batch.host` for the stage's make_inputs), so the step itself only does device work.

    In a thread by default. `process=True` reads and prepares in one forked worker process instead
    (training/worker_process.py): token shards are parsed and tokenized in Python, and a thread doing that holds
    the GIL the step needs (its hand-offs showed up as ~2 % of the step spent in `next`); a process competes for a
    core only. The loader must then build host tensors (device None or cpu); each batch is moved to `device` here,
    as it is handed out.

    Endless (one stream over epochs) and resumable like the loader: `state_dict` is the position after the last
    batch handed out (batches read ahead are not counted), `load_state_dict` drops the read-ahead and moves the
    loader. `prepare` must draw only from the generator it gets (batch_generator), never from torch's global RNG,
    which the main thread's dropout uses."""

    def __init__(
        self,
        loader: Any,
        prepare: Callable[[Any, torch.Generator], Any] | None,
        depth: int,
        seed: int,
        rank: int,
        device: torch.device | None = None,
        process: bool = False,
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.loader, self.prepare, self.depth = loader, prepare, depth
        self.seed, self.rank, self.device, self.process = seed, rank, device, process
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._worker: ForkedWorker[Any] | None = None  # process=True
        self._state: dict[str, int] | None = None  # the loader's position after the last batch handed out

    def state_dict(self) -> dict[str, int]:
        if self._state is None:  # nothing read yet (nothing running): ask the loader itself
            self._state = dict(self.loader.state_dict())
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.loader.load_state_dict(state)
        self._state = dict(self.loader.state_dict())

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.process:
            return self._next_from_process()
        if self._thread is None:
            self.state_dict()  # pin the starting position before the thread moves the loader
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(
                target=self._work, args=(self._stop, self._queue), name="host-prefetch", daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        batch, self._state = item
        return batch

    def close(self) -> None:
        """Stop the thread (after the batch it is reading) or the worker process, drop what was read ahead and
        close the loader's decoder; iterating again continues after the last batch handed out."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None
            self.loader.load_state_dict(self._state)  # the parent's loader never moved: this only re-pins it
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)  # unblock a put
        self._thread = None
        self.loader.load_state_dict(self._state)  # closes its decoder, back at the last batch handed out

    def _prepared(self) -> Iterator[tuple[Any, dict[str, int]]]:
        """(batch with its host inputs, the loader's position after it), endlessly: what the thread or the worker
        process hands over."""
        for batch in endless(self.loader):
            position = dict(self.loader.state_dict())
            if self.prepare is not None:
                batch.host = self.prepare(batch, batch_generator(self.seed, self.rank, position))
            yield batch, position

    def _pickled(self) -> Iterator[bytes]:
        """_prepared, each item pickled by value in the worker process (_TensorsAsArrays): one pipe write of a small
        batch, where torch's shared-memory tensors cost a file-descriptor hand-off per tensor (measured: ~9 ms a
        batch, 5 % of the step); a failure is sent as the last item, raised by the parent."""
        try:
            for item in self._prepared():
                buf = io.BytesIO()
                _TensorsAsArrays(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(item)
                yield buf.getvalue()
        except Exception as err:
            try:
                yield pickle.dumps(_Failed(err))
            except Exception:  # an exception that does not pickle: its text
                yield pickle.dumps(_Failed(RuntimeError(f"{type(err).__name__}: {err}")))

    def _work(self, stop: threading.Event, out: queue.Queue) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    out.put(item, timeout=0.1)
                    return True
            return False

        try:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # a new thread starts on device 0
            for item in self._prepared():
                if not put(item):
                    return
        except BaseException as err:  # handed to the main thread, raised there by __next__
            put(_Failed(err))

    def _next_from_process(self) -> Any:
        if self._worker is None:
            self.state_dict()  # pin the starting position: the worker moves its own copy of the loader
            self._worker = ForkedWorker(self._pickled, self.depth, decode=self._unpickled)
        try:
            item = self._worker.get()
        except BaseException:
            self.close()
            raise
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        batch, self._state = item
        return batch

    def _unpickled(self, data: bytes) -> Any:
        """One item from the worker process (our own bytes), its batch moved to the device."""
        item = pickle.loads(data)
        if isinstance(item, _Failed) or self.device is None:
            return item
        batch, state = item
        return batch.to(self.device), state


class _TensorsAsArrays(pickle.Pickler):
    """Pickles host tensors as numpy arrays, rebuilt by torch.from_numpy: a tensor pickled by value is rebuilt
    through torch.load (measured: 27 ms for one token batch's 14 tensors, 0.2 ms as arrays)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.dtype != torch.bfloat16:
            return torch.from_numpy, (obj.detach().numpy(),)
        return NotImplemented


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
