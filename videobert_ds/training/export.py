"""A ZeRO-3 checkpoint -> a consolidated Hugging Face model dir.

Gathers the fp32 weights from every rank's shards with DeepSpeed's `zero_to_fp32` (under `trusted_loads`: no
pickle runs code), loads them into a plain (unpartitioned) training module built by the stage, and lets the
stage write `save_pretrained` output (config.json + model.safetensors, plus whatever the stage adds to make the
dir self-contained) and an `export.json` naming the run and checkpoint. The dir is written under a temporary
name and renamed, so a reader sees the old export or the whole new one.

The output dir replaces what is there only when that is an earlier export (it holds export.json) or empty;
anything else needs `force`. The run dir, any folder above it, and its checkpoints/ and tb/ are never replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path

from videobert_ds.core.atomic import atomic_dir, is_within, write_json
from videobert_ds.core.config import ConfigError
from videobert_ds.training.checkpoint import CheckpointManager, check_checkpoint_dir, trusted_loads
from videobert_ds.training.stage import Stage

log = logging.getLogger(__name__)

EXPORT_MARKER = "export.json"


def check_out_dir(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> None:
    """ConfigError (one line) unless exporting `run_dir` into `out_dir` can lose nothing of the user's."""
    run, out = Path(run_dir), Path(out_dir)
    if is_within(run, out):
        raise ConfigError(f"--out {out} is the run dir {run} or a folder above it: exporting would delete the run")
    for kept in ("checkpoints", "tb"):
        if is_within(out, run / kept):
            raise ConfigError(f"--out {out} is inside the run's {kept}/: exporting there would delete it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file() and not force:
        raise ConfigError(
            f"--out {out} is not empty and not an earlier export (no {EXPORT_MARKER}): "
            "choose another folder, or pass --force to replace it"
        )


def export_checkpoint(
    stage: Stage, run_dir: str | Path, out_dir: str | Path, tag: str | None = None, force: bool = False
) -> Path:
    """Export the run's checkpoint `tag` (default: the newest sound one) through `stage`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_out_dir(run_dir, out_dir, force)
    ckpt = CheckpointManager(run_dir / "checkpoints")
    if tag is None:
        tag = ckpt.resume_tag()
        if tag is None:
            raise ConfigError(f"{run_dir}: no complete checkpoint to export")
    else:
        check_checkpoint_dir(ckpt.dir / tag, "--tag")
    with trusted_loads():
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.dir), tag=tag)
    module = stage.build_module()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"checkpoint {tag} does not match the model: missing {missing}, unexpected {unexpected}")
    with atomic_dir(out_dir) as tmp:
        stage.export(module.eval(), tmp)
        write_json(tmp / EXPORT_MARKER, {"run": str(run_dir.resolve()), "tag": tag, "stage": stage.name})
    log.info("exported %s (%s) to %s", run_dir, tag, out_dir)
    return out_dir
