"""Stage registry: a config's `stage:` key names the module that runs it (module name = key = slurm script)."""

from __future__ import annotations

import importlib
from pathlib import Path

from videobert_ds.core.config import ConfigError, from_dict, load_yaml
from videobert_ds.training.export import export_checkpoint
from videobert_ds.training.stage import Stage

STAGES = {
    "pretrain_video_encoder": "videobert_ds.stages.pretrain_video_encoder:VideoEncoderStage",
    "build_vocab": "videobert_ds.stages.build_vocab:BuildVocabStage",
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


def export_run(run_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Export a run's newest complete checkpoint (or `tag`) with the stage that trained it."""
    return export_checkpoint(load_run_stage(run_dir), run_dir, out_dir, tag)
