"""Checkpoints that are either complete or invisible.

DeepSpeed writes each rank's shards under `checkpoints/<tag>/`. Only after every rank has finished
(a barrier) does rank 0 drop a `COMPLETE` marker into the tag and atomically replace `latest`, so a
job killed mid-write resumes from the previous complete checkpoint. Each rank also stores its RNG
state beside its shards, so a resumed run draws the same dropout and masking as an uninterrupted one.

The manager also decides *when* a training run saves (`save`: every `schedule.checkpoint_every` steps, at the
last step, or when a stop signal forces it) and where it resumes from (`resume`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from videobert_ds.core.atomic import write_text

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
# Fault injection for the tests: kill this process after its shards are written but before the
# checkpoint is marked complete, exactly what a node failure mid-save looks like.
FAULT_ENV = "VIDEOBERT_FAULT_KILL_IN_CHECKPOINT_STEP"


def is_universal_checkpoint(tag_dir: Path) -> bool:
    """ds_to_universal's output: per-parameter fp32 and optimizer files under `zero/`."""
    return (tag_dir / "zero" / "optimizer_state.pt").is_file()


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Stateful(Protocol):
    """What a checkpoint carries besides the engine and RNG (e.g. the training loader's data position)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CheckpointManager:
    def __init__(self, directory: Path, keep: int = 2, every: int | None = None) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.every = every  # steps between saves; None: only the last step's or a forced one
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    # -- saving --------------------------------------------------------------------------------
    def save(
        self, engine: Any, step: int, states: Mapping[str, Stateful], last_step: bool = False, force: bool = False
    ) -> Path | None:
        """Save if this step is due (every `every` steps, the last step, or forced: a stop signal); -> the
        checkpoint dir, or None when nothing was saved. Call on every rank at every step."""
        if not (force or last_step or (self.every and step % self.every == 0)):
            return None
        return self.write(engine, step, {"step": step, **{name: obj.state_dict() for name, obj in states.items()}})

    def write(self, engine: Any, step: int, client_state: dict[str, Any]) -> Path:
        tag = tag_for_step(step)
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
        if os.environ.get(FAULT_ENV) == str(step):
            log.error("fault injection: killing rank %d while checkpoint %s is incomplete", self.rank, tag)
            os.kill(os.getpid(), signal.SIGKILL)
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            (self.dir / tag / COMPLETE).write_text(f"{step}\n")
            write_text(self.dir / LATEST, tag)
            self._prune(keep_tag=tag)
        if dist.is_initialized():
            dist.barrier()
        return self.dir / tag

    def _prune(self, keep_tag: str) -> None:
        complete = self.complete_tags()
        for tag in complete[: max(0, len(complete) - self.keep)]:
            if tag != keep_tag:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    # -- finding -------------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if (p / COMPLETE).is_file())

    def resume_tag(self) -> str | None:
        """`latest` if it names a complete checkpoint, else the newest complete one, else None."""
        latest = self.dir / LATEST
        if latest.is_file():
            tag = latest.read_text().strip()
            if (self.dir / tag / COMPLETE).is_file():
                return tag
            log.warning("checkpoint %s named by 'latest' is incomplete; looking for an older one", tag)
        tags = self.complete_tags()
        return tags[-1] if tags else None

    # -- loading -------------------------------------------------------------------------------
    def resume(self, engine: Any, how: str, states: Mapping[str, Stateful]) -> int:
        """Restore the engine, RNG and `states` as `how` says: 'auto' (the newest complete checkpoint here, if
        any), 'none', or a checkpoint tag dir anywhere; -> the step to continue from (0: a fresh start)."""
        if how == "none":
            return 0
        if how == "auto":
            source, tag = self, self.resume_tag()
            if tag is None:
                return 0
        else:
            path = Path(how)
            source, tag = CheckpointManager(path.parent, keep=self.keep), path.name
        state = source.load(engine, tag)
        for name, obj in states.items():
            obj.load_state_dict(state[name])
        if self.rank == 0:
            restored = ", ".join(f"{name} position {state[name]}" for name in states)
            log.info("resumed from %s at step %d (%s)", source.dir / tag, state["step"], restored)
        return int(state["step"])

    def load(self, engine: Any, tag: str, load_optimizer: bool = True) -> dict[str, Any]:
        # DeepSpeed reads universal checkpoints (ds_to_universal's output, any world size) only with
        # checkpoint.load_universal set, and then reads *every* checkpoint as universal. Decide per
        # load from what is on disk, so a run started from a universal checkpoint can later resume
        # from the ordinary checkpoints it writes itself (a requeued job).
        engine._config.load_universal_checkpoint = is_universal_checkpoint(self.dir / tag)
        _, client_state = engine.load_checkpoint(
            str(self.dir),
            tag=tag,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_optimizer,
        )
        if client_state is None:
            raise RuntimeError(f"could not load checkpoint {self.dir / tag}")
        rng_file = self.dir / tag / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        else:
            log.warning(
                "no RNG state for rank %d in %s (world size changed?); continuing with fresh RNG", self.rank, tag
            )
        return client_state
