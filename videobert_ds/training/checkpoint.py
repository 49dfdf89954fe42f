"""Checkpoints that are either complete or invisible.

DeepSpeed writes each rank's shards under `checkpoints/<tag>/`. Only after every rank has finished
(a barrier) does rank 0 drop a `COMPLETE` marker into the tag and atomically replace `latest`, so a
job killed mid-write resumes from the previous complete checkpoint. Each rank also stores its RNG
state beside its shards, so a resumed run draws the same dropout and masking as an uninterrupted one.

The marker records every file's size; before a checkpoint is loaded its files are checked against it (and
each pickle is scanned for types a DeepSpeed checkpoint never holds), so `--resume auto` skips a damaged
newest checkpoint (a truncated file) and falls back to the previous one. Checkpoints are pickles: every
`torch.load` while loading one (DeepSpeed's own included) runs with weights_only=True and an allow-list of
the few DeepSpeed types they hold (`trusted_loads`), so a planted object fails to load instead of running.

The manager also decides *when* a training run saves (`save`: every `schedule.checkpoint_every` steps, at the
last step, or when a stop signal forces it) and where it resumes from (`resume`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from videobert_ds.core.atomic import write_json, write_text
from videobert_ds.core.config import ConfigError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
# Fault injection for the tests: kill this process after its shards are written but before the
# checkpoint is marked complete, exactly what a node failure mid-save looks like.
FAULT_ENV = "VIDEOBERT_FAULT_KILL_IN_CHECKPOINT_STEP"
TAG_RE = re.compile(r"^step(\d+)$")
TRUST_NOTE = "checkpoints are pickles: load only run dirs and --resume paths from trusted places"


class CheckpointError(ConfigError):
    """A checkpoint that cannot or must not be loaded (one line; the CLIs exit 2)."""


def tag_step(tag: str) -> int | None:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


# -- loading pickles safely ------------------------------------------------------------------------
def _allowed_types() -> list[type]:
    """What DeepSpeed 0.19's checkpoint pickles hold besides tensors and plain containers (found with
    torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO-3 fp32/bf16 and universal checkpoints)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler, LossScalerBase
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [LossScalerBase, LossScaler, DynamicLossScaler, ZeroStageEnum]


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@contextlib.contextmanager
def trusted_loads() -> Iterator[None]:
    """Every torch.load inside runs with weights_only=True and the allow-list above, DeepSpeed's too: they pass
    weights_only=False explicitly, which only torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides. A pickle that
    names anything else fails with a CheckpointError instead of running it."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_allowed_types()):
            yield
    except pickle.UnpicklingError as err:
        detail = next((ln for ln in str(err).splitlines() if "Unsupported global" in ln), str(err).splitlines()[0])
        raise CheckpointError(f"refusing to load a checkpoint file: {detail.strip()} ({TRUST_NOTE})") from err
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unexpected_globals(path: Path) -> list[str]:
    """Names a pickle in `path` would import beyond torch's safe set and the DeepSpeed allow-list; reads only
    the pickle's opcodes (nothing runs). Raises on a file that is not a readable torch zip (e.g. truncated)."""
    allowed = {_type_name(cls) for cls in _allowed_types()}
    return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]


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
        # A tag saved again (a run resumed from an older checkpoint reaches it anew) is incomplete while its
        # files are rewritten: drop the old marker before any rank writes.
        if self.rank == 0:
            (self.dir / tag / COMPLETE).unlink(missing_ok=True)
        if dist.is_initialized():
            dist.barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), self.dir / tag / f"rng_rank{self.rank}.pt")
        if os.environ.get(FAULT_ENV) == str(step):
            log.error("fault injection: killing rank %d while checkpoint %s is incomplete", self.rank, tag)
            os.kill(os.getpid(), signal.SIGKILL)
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            write_json(self.dir / tag / COMPLETE, {"step": step, "files": file_sizes(self.dir / tag)})
            write_text(self.dir / LATEST, tag)
            self._prune(step)
        if dist.is_initialized():
            dist.barrier()
        return self.dir / tag

    def _prune(self, step: int) -> None:
        """Delete all but the newest `keep` complete checkpoints up to `step`. Only `stepN` tags this manager
        names are touched, and none past `step` (left by a run resumed from an older checkpoint: the run
        rewrites each when it reaches its step)."""
        done = [t for t in self.complete_tags() if (s := tag_step(t)) is not None and s <= step]
        for tag in done[: max(0, len(done) - max(self.keep, 1))]:
            shutil.rmtree(self.dir / tag, ignore_errors=True)

    # -- finding -------------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if (p / COMPLETE).is_file())

    def candidates(self) -> list[str]:
        """Complete tags to try, best first: the one `latest` names, then older ones, newest first."""
        tags = self.complete_tags()
        latest = self.dir / LATEST
        if latest.is_file():
            tag = latest.read_text().strip()
            if tag in tags:
                return [tag] + [t for t in reversed(tags) if t < tag]
            log.warning("checkpoint %s named by 'latest' is incomplete; looking for an older one", tag)
        return list(reversed(tags))

    def problem(self, tag: str) -> str | None:
        """Why checkpoint `tag` cannot be loaded (missing, incomplete, a file truncated or unreadable), or None.
        Raises CheckpointError for a file whose pickle names types no checkpoint holds: never a fallback."""
        tag_dir = self.dir / tag
        if not tag_dir.is_dir():
            return "it does not exist"
        if not (tag_dir / COMPLETE).is_file() and not is_universal_checkpoint(tag_dir):
            return f"it is not complete (no {COMPLETE} marker: a save that did not finish?)"
        problem = None
        for name, size in recorded_sizes(tag_dir).items():  # none recorded in checkpoints of older versions
            f = tag_dir / name
            if not f.is_file():
                problem = problem or f"{name} is missing"
            elif f.stat().st_size != size:
                problem = problem or f"{name} has {f.stat().st_size} bytes, {size} when it was saved"
        for f in sorted(tag_dir.rglob("*.pt")):  # every pickle, damaged or not: a planted one is never skipped
            try:
                bad = unexpected_globals(f)
            except Exception as err:  # noqa: BLE001 - any unreadable file makes the checkpoint unusable
                problem = problem or f"{f.relative_to(tag_dir)} is unreadable ({str(err).splitlines()[0]})"
                continue
            if bad:
                raise CheckpointError(
                    f"{f}: refusing to load: its pickle names {', '.join(bad)}, which no DeepSpeed checkpoint "
                    f"holds ({TRUST_NOTE})"
                )
        return problem

    def resume_tag(self) -> str | None:
        """The newest loadable checkpoint: `latest` if sound, else the next older sound one (each damaged one
        skipped with a warning); None when there is no complete checkpoint at all. CheckpointError when there
        are complete checkpoints but none loads (starting over silently would bury them)."""
        tried = []
        for tag in self.candidates():
            problem = self.problem(tag)
            if problem is None:
                if tried:
                    log.warning("falling back to checkpoint %s", self.dir / tag)
                return tag
            log.warning("checkpoint %s is damaged: %s; trying an older one", self.dir / tag, problem)
            tried.append(f"{tag}: {problem}")
        if tried:
            raise CheckpointError(f"{self.dir}: no loadable checkpoint ({'; '.join(tried)}); --resume none starts over")
        return None

    # -- loading -------------------------------------------------------------------------------
    def resume(self, engine: Any, how: str, states: Mapping[str, Stateful]) -> int:
        """Restore the engine, RNG and `states` as `how` says: 'auto' (the newest sound checkpoint here, if
        any), 'none', or a checkpoint tag dir anywhere; -> the step to continue from (0: a fresh start).
        Rank 0 picks and checks the checkpoint, every rank loads the same one (or raises the same error)."""
        if how == "none":
            return 0
        if how == "auto":
            source = self
            tag = self._on_rank0(self.resume_tag)
        else:
            path = Path(how)
            source = CheckpointManager(path.parent, keep=self.keep)
            tag = self._on_rank0(lambda: check_checkpoint_dir(path) or path.name)
        if tag is None:
            return 0
        state = source.load(engine, tag)
        for name, obj in states.items():
            obj.load_state_dict(state[name])
        if self.rank == 0:
            restored = ", ".join(f"{name} position {state[name]}" for name in states)
            log.info("resumed from %s at step %d (%s)", source.dir / tag, state["step"], restored)
        return int(state["step"])

    def _on_rank0(self, pick: Any) -> str | None:
        """`pick()` on rank 0, its result (or its CheckpointError) on every rank."""
        result: list[Any] = [None, None]
        if self.rank == 0:
            try:
                result = [pick(), None]
            except CheckpointError as err:
                result = [None, str(err)]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(result, src=0)
        if result[1] is not None:
            raise CheckpointError(result[1])
        return result[0]

    def load(self, engine: Any, tag: str, load_optimizer: bool = True) -> dict[str, Any]:
        # DeepSpeed reads universal checkpoints (ds_to_universal's output, any world size) only with
        # checkpoint.load_universal set, and then reads *every* checkpoint as universal. Decide per
        # load from what is on disk, so a run started from a universal checkpoint can later resume
        # from the ordinary checkpoints it writes itself (a requeued job).
        engine._config.load_universal_checkpoint = is_universal_checkpoint(self.dir / tag)
        with trusted_loads():
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


# -- the completion record -------------------------------------------------------------------------
def file_sizes(tag_dir: Path) -> dict[str, int]:
    """Every file of a checkpoint (relative path -> bytes), the marker aside. Sizes, not checksums: they
    catch a truncated or missing file, and hashing multi-GB shards would add minutes to every save."""
    return {
        str(f.relative_to(tag_dir)): f.stat().st_size
        for f in sorted(tag_dir.rglob("*"))
        if f.is_file() and f.name != COMPLETE and not f.name.startswith(".")
    }


def recorded_sizes(tag_dir: Path) -> dict[str, int]:
    """The sizes the completion marker recorded; {} for a marker of an older version (just the step)."""
    try:
        record = json.loads((tag_dir / COMPLETE).read_text())
    except (OSError, ValueError):
        return {}
    return record.get("files", {}) if isinstance(record, dict) else {}


def check_checkpoint_dir(path: str | Path, label: str = "--resume") -> None:
    """A one-line CheckpointError unless `path` is a complete (or universal) checkpoint dir whose files match
    their record. Cheap (sizes and pickle opcodes): train.py checks --resume with it before any rank builds."""
    path = Path(path)
    problem = CheckpointManager(path.parent).problem(path.name) if path.name else "it is not a checkpoint dir"
    if problem is not None:
        raise CheckpointError(f"{label} {path}: {problem}")
