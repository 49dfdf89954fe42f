"""videobert-eval: what a pretrained or fine-tuned VideoBERT does downstream, beside chance.

    videobert-eval --model MODEL_DIR --shards SHARDS --split test --out REPORT.json
    deepspeed --num_gpus 2 videobert_ds/evaluate.py --model ... (or torchrun / srun / mpirun): ranks share the work
    videobert-eval --protocol youcook2-zeroshot|youcook2-caption|msrvtt-1ka [--split-file CSV] --model ... --shards ...

The work is videobert_ds.eval.run (its docstring describes the tasks and their baselines); a standard protocol's is
videobert_ds.eval.protocols (on shards made by videobert-prepare --format youcook2|msrvtt).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from videobert_ds.core.config import ConfigError, load_stage_config, resolve_config_path
from videobert_ds.eval.config import EvalStageConfig, check_eval_config
from videobert_ds.eval.protocols import PROTOCOLS, check_protocol, run_protocol
from videobert_ds.model.model_dir import ModelDirError, check_model_dir, run_dir_problem

if TYPE_CHECKING:
    import torch

# torch, DeepSpeed, DALI and the model are imported in main() after the checks, so a bad flag or model dir
# is a one-line error in a fraction of a second.


def _launched() -> bool:
    return any(k in os.environ for k in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))


def _device() -> torch.device:
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="videobert-eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="exported model dir (overrides model.dir)")
    p.add_argument("--shards", help="shard directory made by videobert-prepare (overrides data.shards)")
    p.add_argument("--split", help="split to evaluate (overrides eval.split)")
    p.add_argument("--out", help="report JSON path (overrides eval.out)")
    p.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        help="a standard protocol instead of the default tasks; its split unless --split: "
        + "; ".join(f"{p.name} ({p.split}): {p.summary}" for p in PROTOCOLS.values()),
    )
    p.add_argument("--split-file", help="msrvtt-1ka: the 1k-A test csv (key,vid_key,video_id,sentence)")
    p.add_argument(
        "--config", default="eval", help="eval YAML: a path or a packaged config name (default: %(default)s)"
    )
    p.add_argument("--zero3", action="store_true", help="partition the model across ranks with DeepSpeed ZeRO-3")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. caption.beam_size=3")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank_env = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank_env == "0" else logging.WARNING,
        format=f"%(asctime)s [rank{rank_env}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    overrides = list(args.overrides)
    for flag, key in (
        (args.model, "model.dir"),
        (args.shards, "data.shards"),
        (args.split or (PROTOCOLS[args.protocol].split if args.protocol else None), "eval.split"),
        (args.out, "eval.out"),
    ):
        if flag is not None:
            overrides.append(f"{key}={json.dumps(flag)}")
    if args.zero3:
        overrides.append("model.zero3=true")
    try:
        if args.split_file is not None and args.protocol is None:
            raise ConfigError("--split-file needs --protocol msrvtt-1ka")
        if args.protocol:
            check_protocol(args.protocol, args.split_file)
        cfg = load_stage_config(EvalStageConfig, resolve_config_path(args.config), overrides)
        hint = run_dir_problem(cfg.model.dir)  # before check_eval_config's "no config.json": say where the model is
        if hint:
            raise ConfigError(f"model.dir: {hint}")
        check_eval_config(cfg)
        check_model_dir(cfg.model.dir)  # weights present and readable, before the split is tokenized
    except ConfigError as err:
        print(f"videobert-eval: error: {err}", file=sys.stderr)
        return 2
    except ModelDirError as err:
        print(f"videobert-eval: error: model.dir: {err}", file=sys.stderr)
        return 2

    import torch.distributed as dist

    from videobert_ds.eval.run import run_evaluation, write_report

    distributed = _launched() or cfg.model.zero3
    if distributed:
        if not _launched():  # ZeRO-3 on one process still needs a process group
            os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        from videobert_ds.core.distributed import init_distributed

        device = init_distributed().device
    else:
        device = _device()
    try:
        if args.protocol:
            report = run_protocol(args.protocol, cfg, device, args.split_file)
        else:
            report = run_evaluation(cfg, device)
        name = f"{args.protocol}.json" if args.protocol else "eval.json"
        out = Path(cfg.eval.out) if cfg.eval.out else Path(cfg.run.dir) / name
        write_report(report, out)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"videobert-eval: error: {err}", file=sys.stderr)
        return 1
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
