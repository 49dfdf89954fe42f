"""`make bench`: every benchmark that fits a CPU machine, one table.

    python -m videobert_ds.bench [--demo-dir runs/demo]

Rows: the DALI and PyAV loaders on the same shards (clips/s, frames/s, ratio); the DALI loader over HTTP (the shard
dir served on loopback) vs the same dir read locally (clips/s, ratio; bench/remote.py, fastest of 2 alternating runs;
on the demo's tiny shards a shard's HTTP start-up weighs far more than on real ones); visual-word assignment (clip
features/s through the frozen encoder + vocabulary); the tiny teacher's training step on 2 ranks under ZeRO-3 vs ZeRO
stage 0 (samples/s, tokens/s, bytes of parameters + optimizer state per rank, the share of step time waiting for
data); the tiny teacher from token shards vs from frames (samples/s, tokens/s, data wait; also the data wait with
token batches read ahead in a thread, not the worker process), the tokenize stage's clips/s, and the same pair on a
vocabulary of the paper's S3D (random weights; bench/tokens.py); activation checkpointing at a BERT-base width (bytes
saved for backward and forward + backward seconds, without | with; bench/memory.py). torch.compile is left out: its
first step compiles for over a minute on a CPU (85 s measured); `python -m videobert_ds.bench.memory` measures it.
Uses the demo's artefacts (`make demo` builds them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from videobert_ds.bench import memory, remote
from videobert_ds.bench.data import bench_loader
from videobert_ds.bench.runs import demo_missing
from videobert_ds.bench.table import Row, machine_line, print_table, ratio_row
from videobert_ds.bench.tokens import compare as compare_tokens
from videobert_ds.bench.train import run as run_training_bench

# make bench's activation checkpointing: BERT-base width at batch 1 x 128 (the Memory levers section of
# docs/benchmarks.md measured 2 x 128), one warm-up and one timed step each way: under a minute on 2 cores.
MEMORY_ARGS = ["--layers", "12", "--hidden", "768", "--batch", "1", "--seq", "128", "--repeats", "2"]


def bench_assignment(demo: Path, batches: int = 20) -> float:
    """Clip features per second through the VisualTokenizer (encode + nearest word), demo sizes."""
    from videobert_ds.data.loader import build_clip_loader
    from videobert_ds.visual.loading import load_visual_tokenizer

    tok, _ = load_visual_tokenizer(
        demo / "video_encoder" / "final", demo / "vocab" / "vocab.safetensors", torch.device("cpu")
    )
    batch = next(iter(build_clip_loader(demo / "shards", "train", 32, 16, shuffle=False)))
    tok(batch.frames, batch.num_frames)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        ids, _ = tok(batch.frames, batch.num_frames)
    return ids.numel() * batches / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videobert_ds.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="runs/demo", type=Path)
    parser.add_argument("--train-steps", type=int, default=60)
    args = parser.parse_args(argv)
    demo = args.demo_dir.resolve()
    if demo_missing(demo, "bench"):
        return 2

    rows: list[Row] = []
    kw = dict(batch_size=8, num_frames=16, threads=2, prefetch=2, warmup=5, batches=60)
    dali = bench_loader(demo / "shards", "train", "dali", **kw)
    pyav = bench_loader(demo / "shards", "train", "pyav", **kw)
    rows.append(ratio_row("loader clips/s (DALI | PyAV)", dali.clips_per_s, pyav.clips_per_s))
    rows.append(("loader frames/s (DALI | PyAV)", f"{dali.frames_per_s:.0f}", f"{pyav.frames_per_s:.0f}", ""))
    served = remote.compare(demo / "shards", backend="dali", repeats=2, **{**kw, "warmup": 2, "batches": 30})
    rows.append(ratio_row("loader clips/s (HTTP | local)", served["http"].clips_per_s, served["local"].clips_per_s))
    rows.append(("visual-word assignment features/s", f"{bench_assignment(demo):.0f}", "", ""))
    with tempfile.TemporaryDirectory() as tmp:
        z3 = run_training_bench(demo, 3, args.train_steps, 2, Path(tmp))
        z0 = run_training_bench(demo, 0, args.train_steps, 2, Path(tmp))
    for key, label, scale, fmt in [
        ("samples_per_s", "train samples/s (ZeRO-3 | ZeRO-0)", 1, "{:.1f}"),
        ("tokens_per_s", "train tokens/s (ZeRO-3 | ZeRO-0)", 1, "{:.0f}"),
        ("state_bytes_total", "params+optimizer MiB/rank (Z3 | Z0)", 2**20, "{:.2f}"),
    ]:
        rows.append(ratio_row(label, z3[key] / scale, z0[key] / scale, fmt))
    rows.append(("data wait, share of step (Z3 | Z0)", f"{z3['data_wait']:.3f}", f"{z0['data_wait']:.3f}", ""))
    tk = compare_tokens(demo, args.train_steps, 2)  # alternating runs, the fastest of each
    t, f = tk["tokens"], tk["frames"]
    for key, label, fmt in [
        ("samples_per_s", "teacher samples/s (tokens | frames)", "{:.1f}"),
        ("tokens_per_s", "teacher tokens/s (tokens | frames)", "{:.0f}"),
    ]:
        rows.append(ratio_row(label, t[key], f[key], fmt))
    rows.append(("data wait, share (tokens | frames)", f"{t['data_wait']:.4f}", f"{f['data_wait']:.4f}", ""))
    rows.append(("data wait, tokens read in a thread", f"{tk['tokens_thread']['data_wait']:.4f}", "", ""))
    rows.append(("tokenize clips/s (2 ranks)", f"{tk['tokenize']['clips_per_s']:.0f}", "", ""))
    s3d = compare_tokens(demo, args.train_steps, 2, encoder="s3d")  # the paper's clip encoder, random weights
    t, f = s3d["tokens"], s3d["frames"]
    rows.append(ratio_row("teacher samples/s, S3D words (tokens | frames)", t["samples_per_s"], f["samples_per_s"]))
    rows += memory.rows(memory.parse([*MEMORY_ARGS, "--compile-steps", "0"]))  # (ckpt | none), ckpt / none

    print("\n" + machine_line())
    print_table(("benchmark", "A", "B", "A / B"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
