"""Stage registry: a config's `stage:` key names the module that trains it."""

from __future__ import annotations

import importlib

from videobert_ds.core.config import ConfigError

STAGES = {
    "pretrain_video_encoder": "videobert_ds.stages.pretrain_video_encoder:VideoEncoderStage",
    "build_vocab": "videobert_ds.stages.build_vocab:BuildVocabStage",
    "pretrain_teacher": "videobert_ds.stages.pretrain_teacher:TeacherStage",
    "distill_student": "videobert_ds.stages.distill_student:StudentStage",
    "finetune": "videobert_ds.stages.finetune:FinetuneStage",
    "evaluate": "videobert_ds.stages.evaluate:EvalStage",
}


def stage_class(name: str) -> type:
    if name not in STAGES:
        raise ConfigError(f"stage: unknown stage {name!r} (known: {', '.join(sorted(STAGES))})")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
