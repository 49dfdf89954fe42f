"""`videobert-export RUN_DIR --out DIR`: a ZeRO-3 checkpoint -> a consolidated Hugging Face model dir.

Reads the run's resolved config.yaml and its newest complete checkpoint (or `--tag`), gathers the fp32
weights from every rank's shards with DeepSpeed's `zero_to_fp32`, loads them into a plain (unpartitioned)
module and lets the stage write `save_pretrained` output (config.json + model.safetensors, plus whatever
the stage adds to make the dir self-contained). The dir is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from videobert_ds.training.checkpoint import CheckpointManager
from videobert_ds.core.config import ConfigError, from_dict, load_yaml
from videobert_ds.stages import stage_class

log = logging.getLogger(__name__)


def load_run_stage(run_dir: Path):
    """The stage object of a finished or running run, rebuilt from its saved config.yaml."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml)")
    data = load_yaml(config_file)
    cls = stage_class(data.get("stage", ""))
    return cls(from_dict(cls.config_cls, data))


def export_run(run_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    stage = load_run_stage(run_dir)
    ckpt = CheckpointManager(run_dir / "checkpoints")
    tag = tag or ckpt.resume_tag()
    if tag is None:
        raise ConfigError(f"{run_dir}: no complete checkpoint to export")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.dir), tag=tag)
    module = stage.build_module()
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"checkpoint {tag} does not match the model: missing {missing}, unexpected {unexpected}")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stage.export(module.eval(), tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("exported %s (%s) to %s", run_dir, tag, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videobert-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run dir (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", required=True, help="output model dir")
    parser.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export_run(args.run_dir, args.out, args.tag)
    except (ConfigError, FileNotFoundError) as err:
        print(f"videobert-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
