"""A ZeRO-3 checkpoint -> a consolidated Hugging Face model dir.

Gathers the fp32 weights from every rank's shards with DeepSpeed's `zero_to_fp32`, loads them into a plain
(unpartitioned) training module built by the stage, and lets the stage write `save_pretrained` output
(config.json + model.safetensors, plus whatever the stage adds to make the dir self-contained). The dir is
written under a temporary name and renamed, so a reader sees the old export or the whole new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from videobert_ds.core.atomic import atomic_dir
from videobert_ds.core.config import ConfigError
from videobert_ds.training.checkpoint import CheckpointManager
from videobert_ds.training.stage import Stage

log = logging.getLogger(__name__)


def export_checkpoint(stage: Stage, run_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Export the run's checkpoint `tag` (default: the newest complete one) through `stage`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt = CheckpointManager(run_dir / "checkpoints")
    tag = tag or ckpt.resume_tag()
    if tag is None:
        raise ConfigError(f"{run_dir}: no complete checkpoint to export")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.dir), tag=tag)
    module = stage.build_module()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"checkpoint {tag} does not match the model: missing {missing}, unexpected {unexpected}")
    with atomic_dir(out_dir) as tmp:
        stage.export(module.eval(), tmp)
    log.info("exported %s (%s) to %s", run_dir, tag, out_dir)
    return out_dir
