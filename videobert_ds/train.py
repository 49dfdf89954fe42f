"""The one entry point of every training stage.

    deepspeed videobert_ds/train.py --deepspeed ds_configs/zero3.json [--config STAGE.yaml] [key.path=value ...]

With no --config it pretrains the VideoBERT teacher with the default (real-size) teacher config.
The algorithm: validate everything -> join the process group -> train the stage on the DeepSpeed engine
(resuming from the newest complete checkpoint) -> export the consolidated model to RUN_DIR/final.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CONFIG = "teacher"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="videobert-train", description="Train one VideoBERT-DS stage under DeepSpeed."
    )
    parser.add_argument(
        "--deepspeed",
        "--deepspeed_config",
        dest="deepspeed",
        default="ds_configs/zero3.json",
        help="DeepSpeed JSON (batch sizes, optimizer, precision, ZeRO)",
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="stage YAML: a path or a packaged config name (default: %(default)s)"
    )
    parser.add_argument(
        "--resume",
        default="auto",
        help="'auto' (newest sound checkpoint in the run dir, if any; a damaged one is skipped), 'none', "
        "or a checkpoint tag dir (from a trusted place: checkpoints are pickles)",
    )
    parser.add_argument("--no-export", action="store_true", help="skip exporting RUN_DIR/final at the end")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build the model under the DeepSpeed config, write RUN_DIR/partition_rank*.json "
        "(parameters held and peak memory per rank), and exit: a dry run before a big job",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. schedule.max_steps=100")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after options


def setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()

    import torch

    from videobert_ds.core.config import (
        ConfigError,
        check_against_deepspeed,
        check_paths,
        load_deepspeed_config,
        load_stage_config,
        load_yaml,
        resolve_config_path,
        save_config,
    )
    from videobert_ds.stages import stage_class

    # 1. Validate config, DeepSpeed config and paths on every rank before any rank starts work.
    try:
        config_path = resolve_config_path(args.config)
        stage_cls = stage_class(load_yaml(config_path).get("stage", ""))
        cfg = load_stage_config(stage_cls.config_cls, config_path, args.overrides)
        ds_config = load_deepspeed_config(args.deepspeed)
        check_against_deepspeed(cfg, ds_config, has_gpu=torch.cuda.is_available())
        if not args.build_only:  # a dry run needs the model's inputs (tokenizer, vocabulary), not the data
            check_paths(cfg)
        stage = stage_cls(cfg)
        stage.check()
        if args.resume not in ("auto", "none"):  # a checkpoint dir: complete and sound, or stop here
            from videobert_ds.training.checkpoint import check_checkpoint_dir

            check_checkpoint_dir(args.resume)
    except ConfigError as err:
        print(f"videobert-train: error: {err}", file=sys.stderr)
        return 2

    # 2. Join the process group; 3. train (resuming if a checkpoint exists).
    import torch.distributed as dist

    from videobert_ds.core.distributed import init_distributed
    from videobert_ds.data.sources import SkippedTooMany
    from videobert_ds.training.preflight import check_train_split
    from videobert_ds.training.trainer import Trainer

    env = init_distributed(cfg.run.dist_timeout_minutes)
    batch_size = stage.loader_batch_size(ds_config, env.world_size)
    if batch_size and not args.build_only:  # needs the world size, known only now
        try:
            check_train_split(cfg, batch_size, env.world_size)
        except ConfigError as err:
            if env.rank == 0:
                print(f"videobert-train: error: {err}", file=sys.stderr)
            dist.destroy_process_group()
            return 2
    if not stage.trains:  # e.g. build_vocab: the same launch, its own work
        run_dir = Path(cfg.run.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if env.rank == 0:
            save_config(cfg, run_dir / "config.yaml")
        stage.run(run_dir, env.rank, env.world_size, env.device)
        dist.barrier()  # no rank tears the group down while another still writes (e.g. rank 0's report)
        dist.destroy_process_group()
        return 0

    trainer = Trainer(stage, cfg, ds_config, env)
    if args.build_only:
        trainer.build_only()
        dist.destroy_process_group()
        return 0
    try:
        trainer.fit(resume=args.resume)
    except ConfigError as err:  # e.g. no loadable checkpoint: every rank raises the same one-line error
        if env.rank == 0:
            print(f"videobert-train: error: {err}", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    except SkippedTooMany as err:  # this rank's loader skipped past data.max_skip_share; the launcher ends the rest
        print(f"videobert-train: error: {err}", file=sys.stderr)
        return 1
    stopped_early = trainer.stopped_early
    del trainer  # releases the ZeRO-3 construction context before the plain export below

    # 4. Export the consolidated model once training has finished.
    if not stopped_early and not args.no_export and env.rank == 0:
        from videobert_ds.stages import export_run

        export_run(cfg.run.dir, Path(cfg.run.dir) / "final", force=True)  # final/ is the run's own output
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
