"""`make bench`: every benchmark that fits a CPU machine, one table.

    python -m videobert_ds.bench [--demo-dir runs/demo]

Rows: the DALI and PyAV loaders on the same shards (clips/s, frames/s, ratio); visual-word assignment
(clip features/s through the frozen encoder + vocabulary); the tiny teacher's training step on 2 ranks
under ZeRO-3 vs ZeRO stage 0 (samples/s, tokens/s, bytes of parameters + optimizer state per rank, the
share of step time waiting for data); the tiny teacher from token shards vs from frames (samples/s, tokens/s,
data wait) and the tokenize stage's clips/s (bench/tokens.py). Uses the demo's artefacts (`make demo` builds
them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from videobert_ds.bench.data import bench_loader
from videobert_ds.bench.tokens import compare as compare_tokens
from videobert_ds.bench.train import run as run_training_bench


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
    if not (demo / "teacher" / "tokenizer").is_dir():
        print(f"bench: error: {demo} lacks the demo artefacts; run `make demo` first", file=sys.stderr)
        return 2

    rows: list[tuple[str, str, str, str]] = []
    kw = dict(batch_size=8, num_frames=16, threads=2, prefetch=2, warmup=5, batches=60)
    dali = bench_loader(demo / "shards", "train", "dali", **kw)
    pyav = bench_loader(demo / "shards", "train", "pyav", **kw)
    rows.append(
        (
            "loader clips/s (DALI | PyAV)",
            f"{dali.clips / dali.seconds:.1f}",
            f"{pyav.clips / pyav.seconds:.1f}",
            f"{(dali.clips / dali.seconds) / (pyav.clips / pyav.seconds):.2f}x",
        )
    )
    rows.append(
        ("loader frames/s (DALI | PyAV)", f"{dali.frames / dali.seconds:.0f}", f"{pyav.frames / pyav.seconds:.0f}", "")
    )
    rows.append(("visual-word assignment features/s", f"{bench_assignment(demo):.0f}", "", ""))
    with tempfile.TemporaryDirectory() as tmp:
        z3 = run_training_bench(demo, 3, args.train_steps, 2, Path(tmp))
        z0 = run_training_bench(demo, 0, args.train_steps, 2, Path(tmp))
    for key, label, scale, fmt in [
        ("samples_per_s", "train samples/s (ZeRO-3 | ZeRO-0)", 1, "{:.1f}"),
        ("tokens_per_s", "train tokens/s (ZeRO-3 | ZeRO-0)", 1, "{:.0f}"),
        ("state_bytes_total", "params+optimizer MiB/rank (Z3 | Z0)", 2**20, "{:.2f}"),
    ]:
        a, b = z3[key] / scale, z0[key] / scale
        rows.append((label, fmt.format(a), fmt.format(b), f"{a / b:.2f}x"))
    rows.append(("data wait, share of step (Z3 | Z0)", f"{z3['data_wait']:.3f}", f"{z0['data_wait']:.3f}", ""))
    tk = compare_tokens(demo, args.train_steps, 2)  # alternating runs, the fastest of each
    t, f = tk["tokens"], tk["frames"]
    for key, label, fmt in [
        ("samples_per_s", "teacher samples/s (tokens | frames)", "{:.1f}"),
        ("tokens_per_s", "teacher tokens/s (tokens | frames)", "{:.0f}"),
    ]:
        rows.append((label, fmt.format(t[key]), fmt.format(f[key]), f"{t[key] / f[key]:.2f}x"))
    rows.append(("data wait, share (tokens | frames)", f"{t['data_wait']:.4f}", f"{f['data_wait']:.4f}", ""))
    rows.append(("tokenize clips/s (2 ranks)", f"{tk['tokenize']['clips_per_s']:.0f}", "", ""))

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(f"| {'benchmark':38s} | {'A':>10s} | {'B':>10s} | {'A / B':>8s} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
    for label, a, b, r in rows:
        print(f"| {label:38s} | {a:>10s} | {b:>10s} | {r:>8s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
