"""Stage registry: a config's `stage:` key names the module that runs it (module name = key = slurm script)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from videobert_ds.core.config import ConfigError, from_dict, load_yaml
from videobert_ds.training.export import export_checkpoint
from videobert_ds.training.stage import Stage

STAGES = {
    "pretrain_video_encoder": "videobert_ds.stages.pretrain_video_encoder:VideoEncoderStage",
    "build_vocab": "videobert_ds.stages.build_vocab:BuildVocabStage",
    "tokenize": "videobert_ds.stages.tokenize:TokenizeStage",
    "pretrain_teacher": "videobert_ds.stages.pretrain_teacher:TeacherStage",
    "distill_student": "videobert_ds.stages.distill_student:StudentStage",
    "finetune": "videobert_ds.stages.finetune:FinetuneStage",
    "evaluate": "videobert_ds.stages.evaluate:EvalStage",
}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ConfigError(f"stage: unknown stage {name!r} (known: {', '.join(sorted(STAGES))})")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_run_stage(run_dir: str | Path) -> Stage:
    """The stage object of a finished or running run, rebuilt from its saved config.yaml."""
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml)")
    data = load_yaml(config_file)
    cls = stage_class(data.get("stage", ""))
    return cls(from_dict(cls.config_cls, data))


def export_run(run_dir: str | Path, out_dir: str | Path, tag: str | None = None, force: bool = False) -> Path:
    """Export a run's newest sound checkpoint (or `tag`) with the stage that trained it; `force` replaces an
    `out_dir` that is not an earlier export (never the run dir or a folder above it)."""
    return export_checkpoint(load_run_stage(run_dir), run_dir, out_dir, tag, force)


def cast_unpartitioned(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters ZeRO-3 has not partitioned to `dtype` (the precision of the Hugging Face model they
    serve); a no-op in fp32 runs.

    Under ZeRO-3 with bf16, a model built by `_from_config`/`from_pretrained` is created partitioned and in
    bf16 (zero.Init), and DeepSpeed then casts no other parameter (once any is partitioned it assumes all
    are): a loss-side module made with plain nn.Linear stays fp32, and ZeRO-3 refuses a parameter group of
    two dtypes (the `defragment` assertion in deepspeed.initialize)."""
    for p in module.parameters():
        if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return module
