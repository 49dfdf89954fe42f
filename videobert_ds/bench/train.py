"""Training-step benchmark: the tiny teacher on 2 ranks under ZeRO-3 vs ZeRO stage 0 (plain data
parallel) with the same micro-batch, side by side in one run.

    python -m videobert_ds.bench.train [--demo-dir runs/demo] [--steps 60] [--ranks 2]
    python -m videobert_ds.bench.train --micro-batches 8,32   # ZeRO-3 only, one run per micro-batch

Prints samples/s and tokens/s (the ratio is the cost of partitioning), the bytes of parameters and
optimizer state each rank holds (measured from the live tensors; ZeRO-3 should hold ≈ 1/world of
stage 0), and the share of step time spent waiting for data. Needs the demo's shards, clip encoder
and vocabulary (`make demo`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from videobert_ds.bench.runs import demo_missing, teacher_run
from videobert_ds.bench.table import print_table, ratio_row
from videobert_ds.cli.demo import REPO


def run(demo: Path, zero_stage: int, steps: int, ranks: int, work: Path, micro_batch: int | None = None) -> dict:
    ds = json.loads((REPO / "ds_configs" / "zero3_cpu_bert.json").read_text())
    ds["zero_optimization"] = {"stage": zero_stage} if zero_stage != 3 else ds["zero_optimization"]
    if micro_batch is not None:
        ds["train_micro_batch_size_per_gpu"] = micro_batch
    name = f"zero{zero_stage}_mb{ds['train_micro_batch_size_per_gpu']}"
    ds_path = work / f"{name}.json"
    ds_path.write_text(json.dumps(ds))
    run_dir = work / name
    figures = teacher_run(demo, run_dir, steps, ranks, ds_path, what=f"ZeRO-{zero_stage} run")
    held = json.loads((run_dir / "partition_rank0.json").read_text())
    return {**figures, "micro_batch": ds["train_micro_batch_size_per_gpu"], **held}


def compare_micro_batches(demo: Path, micro_batches: list[int], steps: int, ranks: int) -> None:
    """ZeRO-3 at each micro-batch, side by side: on a CPU a tiny model's step is mostly per-op overhead."""
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(demo, 3, steps, ranks, Path(tmp), mb) for mb in micro_batches]
    base = results[0]
    print(f"\nTiny teacher, ZeRO-3, {ranks} ranks, {steps} steps (second half timed)")
    rows = [
        (
            str(r["micro_batch"]),
            f"{r['samples_per_s']:.1f}",
            f"{r['micro_batch'] * ranks / r['samples_per_s']:.3f}",
            f"{r['samples_per_s'] / base['samples_per_s']:.2f}x",
        )
        for r in results
    ]
    print_table(("micro-batch", "samples/s", "step (s)", "samples/s vs first"), rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videobert_ds.bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="runs/demo", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--micro-batches",
        help="comma-separated micro-batches: compare ZeRO-3 throughput at each instead of ZeRO-3 vs ZeRO-0",
    )
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    if demo_missing(demo, "bench.train"):
        return 2
    if args.micro_batches:
        try:
            micro_batches = [int(x) for x in args.micro_batches.split(",")]
        except ValueError:
            parser.error(f"--micro-batches: expected integers like 8,32, got {args.micro_batches!r}")
        if any(mb < 1 for mb in micro_batches):
            parser.error("--micro-batches: every micro-batch must be >= 1")
        compare_micro_batches(demo, micro_batches, args.steps, args.ranks)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = {stage: run(demo, stage, args.steps, args.ranks, Path(tmp)) for stage in (3, 0)}
    z3, z0 = results[3], results[0]
    mib = 2**20
    print(f"\nTiny teacher, {args.ranks} ranks, {args.steps} steps (second half timed), same micro-batch")
    rows = [
        ratio_row(label, z3[key] / scale, z0[key] / scale, "{:.3f}", "{:.3f}")
        for key, label, scale in [
            ("samples_per_s", "samples/s", 1),
            ("tokens_per_s", "tokens/s", 1),
            ("param_bytes", "parameters held (MiB)", mib),
            ("master_param_bytes", "master copies held (MiB)", mib),
            ("optimizer_state_bytes", "optimizer state held (MiB)", mib),
            ("state_bytes_total", "params + optimizer (MiB)", mib),
        ]
    ]
    rows.append(("data wait (share of step)", f"{z3['data_wait']:.3f}", f"{z0['data_wait']:.3f}", ""))
    print_table(("", "ZeRO-3", "ZeRO-0", "ZeRO-3 / ZeRO-0"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
