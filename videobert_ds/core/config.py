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


@dataclass
class DataConfig:
    shards: str = "runs/demo/shards"
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16
    backend: Literal["auto", "dali", "pyav"] = "auto"
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 64
    # Write the sample keys each rank consumed to run_dir/samples_rank{r}.jsonl (resume audits).
    log_sample_keys: bool = False


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
    """Paths the stage reads must exist before any rank starts work."""
    manifest = Path(cfg.data.shards) / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"data.shards: no shard directory at {cfg.data.shards} (missing manifest.json)")


def load_stage_config(cls: type, path: Path, overrides: list[str]) -> StageConfig:
    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(cls, data)
    return cfg


def save_config(cfg: StageConfig, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
