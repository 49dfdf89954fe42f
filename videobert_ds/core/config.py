"""Typed stage configs: YAML files plus dotted command-line overrides, validated before any rank works.

A stage YAML owns model, data, objectives and schedule length; the DeepSpeed JSON owns batch sizes,
optimizer, precision and ZeRO. `check_against_deepspeed` turns a contradiction between the two into a
one-line `ConfigError` before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from videobert_ds.core import remote

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config problem the user must fix; printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Sections shared by every stage
# ---------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0
    # Bound on every collective (core/distributed.init_distributed); DeepSpeed's own default is 10 minutes.
    dist_timeout_minutes: float = 60.0

    def __post_init__(self) -> None:
        if self.dist_timeout_minutes <= 0:
            raise ConfigError(f"run.dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}")


DEFAULT_SHARDS = "runs/demo/shards"


@dataclass
class SourceConfig:
    """One of several weighted shard locations (data.sources)."""

    shards: str = ""
    weight: float = 1.0  # open_clip's upsampling factor: each of its shards is read `weight` times per epoch

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("data.sources: every source needs shards: LOCATION")
        if not self.weight > 0:
            raise ConfigError(f"data.sources: weight of {self.shards} must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    # A shard location: a folder made by videobert-prepare, an http(s):// URL of one, a brace pattern of its tars
    # (http://host/c/shard-{000000..000099}.tar, manifest.json beside them), a pipe: command, or s3:// / gs://
    # (any fsspec URL) when the protocol's package is installed.
    shards: str = DEFAULT_SHARDS
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16
    backend: Literal["auto", "dali", "pyav"] = "auto"
    num_threads: int = 2
    prefetch: int = 2  # training batches read (and their host inputs built) ahead of the step
    # Where the training batches are read ahead: "thread", or "process" (one forked worker, torch's DataLoader:
    # token shards only, which are parsed in Python and would hold the GIL the step needs); "auto": a process for
    # data.tokens, a thread for DALI, which decodes in its own native threads and may hand over GPU tensors.
    prefetch_worker: Literal["auto", "thread", "process"] = "auto"
    shuffle_buffer: int = 64
    # Which num_frames of a longer clip training reads: "random" (drawn per seed, epoch and sample: exact on resume),
    # "center" or "start" (the first frames). Validation and evaluation always take the centre.
    temporal_crop: Literal["random", "center", "start"] = "random"
    # Write the sample keys each rank consumed to run_dir/samples_rank{r}.jsonl (resume audits).
    log_sample_keys: bool = False
    # A token shard dir (a tokenize run's RUN_DIR/tokens): train on its visual words and clip features instead of
    # decoding `shards` and encoding every clip at each step; empty = decode the frames (e.g. to augment clips).
    tokens: str = ""
    # Several weighted locations instead of one: [{shards: LOCATION, weight: W}, ...]; the training and validation
    # loaders read the mix. `shards` (what stages read metadata from: frame size, labels, texts) defaults to the
    # first source's location.
    sources: list[SourceConfig] = field(default_factory=list)
    # "epoch": every shard read once per epoch (times its source's weight); "resampled": each rank draws shards
    # with replacement by weight (seeded by seed, epoch and rank). Both deterministic and exactly resumable.
    sampling: Literal["epoch", "resampled"] = "epoch"
    # "raise": a shard or sample that cannot be read or parsed stops the run; "skip": it is skipped, counted
    # (data/skipped_* in TensorBoard and metrics.jsonl) and made up from other samples, every rank taking the same
    # steps; more than max_skip_share of the samples read (counted as at least one epoch) fails the run.
    on_error: Literal["raise", "skip"] = "raise"
    max_skip_share: float = 0.01
    # Re-opens of a remote shard whose read failed (a dropped connection), resuming at the sample reached, with a
    # backoff starting at retry_backoff_s and doubling; then on_error applies.
    read_retries: int = 3
    retry_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.sources and self.shards == DEFAULT_SHARDS:
            self.shards = self.sources[0].shards
        if not 0 <= self.max_skip_share <= 1:
            raise ConfigError(f"data.max_skip_share must be in [0, 1], got {self.max_skip_share}")
        if self.read_retries < 0 or self.retry_backoff_s < 0:
            raise ConfigError("data.read_retries and data.retry_backoff_s must be >= 0")
        if self.prefetch_worker == "process" and not self.tokens:
            raise ConfigError("data.prefetch_worker: process reads token shards only (set data.tokens), or use thread")

    def prefetch_in_process(self) -> bool:
        """Whether the trainer reads ahead in a worker process (data.prefetch_worker)."""
        return self.prefetch_worker == "process" or (self.prefetch_worker == "auto" and bool(self.tokens))

    def shard_sources(self) -> str | list[tuple[str, float]]:
        """What the clip loaders read: data.shards, or the weighted sources when data.sources is set."""
        return [(s.shards, s.weight) for s in self.sources] if self.sources else self.shards


@dataclass
class ScheduleConfig:
    max_steps: int = 1000
    warmup_steps: int = 100
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    log_every: int = 10
    # Steps between checks for SIGUSR1/SIGTERM (one all-reduce of a flag, so every rank stops at the same
    # step); also checked at every log step. Small, so a short SLURM KillWait loses little work.
    signal_check_every: int = 10
    val_every: int = 500
    val_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2


@dataclass
class StageConfig:
    """Base of every stage config; stages subclass it and add `model` / `objective` sections."""

    stage: str = ""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


# Keys the DeepSpeed JSON owns: a stage YAML that sets them contradicts it.
DEEPSPEED_OWNED = {
    "batch_size": "train_micro_batch_size_per_gpu",
    "micro_batch_size": "train_micro_batch_size_per_gpu",
    "train_batch_size": "train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr": "optimizer.params.lr",
    "learning_rate": "optimizer.params.lr",
    "optimizer": "optimizer",
    "weight_decay": "optimizer.params.weight_decay",
    "bf16": "bf16.enabled",
    "fp16": "fp16.enabled",
    "precision": "bf16/fp16",
    "zero_optimization": "zero_optimization",
    "zero_stage": "zero_optimization.stage",
    "gradient_clipping": "gradient_clipping",
}


# ---------------------------------------------------------------------------------------------
# dict -> dataclass with type checks
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            if key in DEEPSPEED_OWNED:
                raise ConfigError(f"{path}: set by the DeepSpeed config ({DEEPSPEED_OWNED[key]}), not the stage config")
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides
# ---------------------------------------------------------------------------------------------


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a packaged config (`teacher_tiny` / `teacher_tiny.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGE_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    raise ConfigError(f"config file not found: {name}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values parse as YAML scalars (`3`, `1e-4`, `true`, `[1, 2]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_deepspeed_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None


def micro_batch_size(ds_config: dict, world_size: int) -> int:
    """Samples per rank per forward: set directly, or derived from the global batch and accumulation."""
    if "train_micro_batch_size_per_gpu" in ds_config:
        return int(ds_config["train_micro_batch_size_per_gpu"])
    gas = int(ds_config.get("gradient_accumulation_steps", 1))
    return int(ds_config["train_batch_size"]) // (gas * world_size)


def check_against_deepspeed(cfg: StageConfig, ds_config: dict, has_gpu: bool) -> None:
    """Contradictions between the stage config and the DeepSpeed config, as one-line errors."""
    if "train_micro_batch_size_per_gpu" not in ds_config and "train_batch_size" not in ds_config:
        raise ConfigError("DeepSpeed config sets neither train_micro_batch_size_per_gpu nor train_batch_size")
    if "scheduler" in ds_config:
        raise ConfigError(
            "DeepSpeed config has a 'scheduler' but the LR schedule is owned by the stage config "
            "(schedule.warmup_steps / schedule.decay / schedule.max_steps); remove 'scheduler'"
        )
    if "optimizer" not in ds_config:
        raise ConfigError("DeepSpeed config has no 'optimizer' section (it owns the optimizer and lr)")
    if ds_config.get("fp16", {}).get("enabled") and not has_gpu:
        raise ConfigError("DeepSpeed config enables fp16 but no GPU is present; use ds_configs/zero3_cpu.json")
    s = cfg.schedule
    if s.warmup_steps > s.max_steps:
        raise ConfigError(f"schedule.warmup_steps ({s.warmup_steps}) exceeds schedule.max_steps ({s.max_steps})")
    for name in ("log_every", "signal_check_every", "val_every", "checkpoint_every", "max_steps"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"schedule.{name} must be positive")


def check_paths(cfg: StageConfig) -> None:
    """Paths the stage reads must exist before any rank starts work, and the shard dirs must be whole."""
    check_shard_dir(cfg.data.shards)
    for source in cfg.data.sources:
        if source.shards != cfg.data.shards:
            check_shard_dir(source.shards, "data.sources")


def read_dali_index(idx: str | Path) -> tuple[int, list[tuple[int, int]]]:
    """A DALI webdataset index (wds2idx ``v1.2``: ``ext offset size name`` per member; ``v1.1``: no name):
    (samples, [(data offset, size) of every member]). ValueError when it is garbled."""
    lines = Path(idx).read_bytes().decode("ascii").splitlines()  # UnicodeDecodeError is a ValueError
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] not in ("v1.1", "v1.2") or not head[1].isdigit():
        raise ValueError("no 'v1.x N' header")
    samples, width = int(head[1]), 4 if head[0] == "v1.2" else 3
    if len(lines) - 1 != samples:
        raise ValueError(f"its header says {samples} samples, it lists {len(lines) - 1}")
    members = []
    for line in lines[1:]:
        fields = line.split()
        if not fields or len(fields) % width:
            raise ValueError(f"malformed line {line[:60]!r}")
        for i in range(0, len(fields), width):
            offset, size = int(fields[i + 1]), int(fields[i + 2])
            if offset < 512 or offset % 512 or size < 0:  # data starts after a header, on a 512-byte block
                raise ValueError(f"member at offset {offset} is not on a tar block")
            members.append((offset, size))
    return samples, members


def _tar_header_size(tar: Path, data_offset: int) -> int | None:
    """The size field of the ustar header just before ``data_offset``, or None where no such header is."""
    with tar.open("rb") as f:
        f.seek(data_offset - 512)
        header = f.read(512)
    if len(header) < 512 or header[257:262] != b"ustar":
        return None
    try:
        return int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
    except ValueError:
        return None


def check_remote_location(shards: str, key: str = "data.shards") -> None:
    """A remote location (URL, pattern, pipe:): its protocol can be opened here and its manifest.json reads and
    lists shards. Only the manifest is fetched: the tars and their indexes are read by the loader."""
    problem = remote.location_problem(shards)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    try:
        url = remote.manifest_url(shards)
        listed = json.loads(remote.read_url(url))["shards"]
        if not isinstance(listed, list) or not all(isinstance(s, dict) and isinstance(s["file"], str) for s in listed):
            raise ValueError("'shards' is not a list of shards")
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ConfigError(f"{key}: cannot read the manifest.json of {shards} ({why})") from None


def check_shard_dir(shards: str | Path, key: str = "data.shards") -> None:
    """One-line ConfigError for a shard dir that is missing or damaged: manifest.json unreadable, a listed tar or
    .idx missing, an index that is garbled or disagrees with manifest.json, a tar shorter than its index says (a
    truncated copy) or holding other members. Cheap: a stat, the index and one 512-byte header per shard; the tars
    themselves are not read. A remote location (or a pattern) gets check_remote_location: its manifest only."""
    loc = str(shards)
    if not remote.is_local(loc) or remote.names_list(loc):
        check_remote_location(loc, key)
        return
    d = Path(remote.local_path(loc))
    manifest = d / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"{key}: no shard directory at {shards} (missing manifest.json)")
    again = "prepare it again"
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["shards"]
        if not isinstance(listed, list) or not all(isinstance(s, dict) and isinstance(s["file"], str) for s in listed):
            raise ValueError("'shards' is not a list of shards")
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        bad = f"{key}: corrupt shard directory {d}"
        raise ConfigError(f"{bad}: manifest.json is unreadable ({why}); {again}") from None
    for entry in listed:
        tar = d / entry["file"]
        bad = f"{key}: corrupt shard {tar}"
        try:
            tar_size = tar.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"{bad}: missing (listed in manifest.json); {again}") from None
        if not isinstance(entry.get("idx"), str):
            continue  # a shard dir made elsewhere, without DALI indexes
        idx = d / entry["idx"]
        try:
            samples, members = read_dali_index(idx)
        except FileNotFoundError:
            raise ConfigError(f"{bad}: index {idx.name} is missing; {again}") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{bad}: index {idx.name} is garbled ({e}); {again}") from None
        if isinstance(entry.get("num_samples"), int) and samples != entry["num_samples"]:
            raise ConfigError(
                f"{bad}: index {idx.name} lists {samples} samples, manifest.json {entry['num_samples']}; {again}"
            )
        if not members:
            continue
        offset, size = max(members)
        needed = -(-(offset + size) // 512) * 512  # the last member's data, padded to its 512-byte block
        if tar_size < needed:
            raise ConfigError(f"{bad}: truncated ({tar_size} bytes, its index needs {needed}); {again}")
        if _tar_header_size(tar, offset) != size:
            where = f"no member of {size} bytes at {offset}"
            raise ConfigError(f"{bad}: does not match its index {idx.name} ({where}); {again}")


def load_stage_config(cls: type, path: Path, overrides: list[str]) -> StageConfig:
    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(cls, data)
    return cfg


def save_config(cfg: StageConfig, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
