"""Data-loading benchmark: the DALI and the PyAV clip loader on the same shards, in one run.

    python -m videobert_ds.bench.data [--shards DIR] [--batch-size B] [--frames T] [--threads N]

Without --shards a small synthetic corpus is made and prepared (VP9) in a temporary directory.
Each loader first delivers --warmup batches (pipeline build, thread start-up: not timed), then
--batches timed ones. Clips/s counts delivered clips; frames/s counts their true (unpadded) frames.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from videobert_ds.data.loader import ClipBatch, ClipLoader, build_clip_loader


@dataclass
class BenchResult:
    backend: str
    clips: int
    frames: int
    seconds: float

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds


def _batches_forever(loader: ClipLoader) -> Iterator[ClipBatch]:
    while True:  # epochs one after another, so --batches may exceed one epoch
        yield from loader


def bench_loader(
    shard_dir: Path,
    split: str,
    backend: str,
    *,
    batch_size: int,
    num_frames: int,
    threads: int,
    prefetch: int,
    warmup: int,
    batches: int,
) -> BenchResult:
    """Time ``batches`` batches of one backend after ``warmup`` untimed ones."""
    loader = build_clip_loader(
        shard_dir,
        split,
        batch_size,
        num_frames,
        backend=backend,
        device="cpu",
        num_threads=threads,
        prefetch=prefetch,
        seed=0,
    )
    stream = _batches_forever(loader)
    for _ in islice(stream, warmup):
        pass
    clips = frames = 0
    start = time.perf_counter()
    for batch in islice(stream, batches):
        clips += batch.frames.shape[0]
        frames += int(batch.num_frames.sum())
    seconds = time.perf_counter() - start
    loader.close()
    return BenchResult(backend, clips, frames, seconds)


def make_corpus(work: Path, *, num_videos: int, size: int, fps: int, samples_per_shard: int = 32) -> Path:
    """Synthesize and prepare a small VP9 shard dir under ``work``; returns the shard dir."""
    from videobert_ds.data.prepare import prepare_corpus
    from videobert_ds.data.synth import synthesize

    manifest = synthesize(work / "corpus", num_videos=num_videos, seed=0, progress=False)
    shards = work / "shards"
    per_shard = samples_per_shard
    prepare_corpus(manifest, shards, codec="vp9", fps=fps, size=size, samples_per_shard=per_shard, progress=False)
    return shards


def format_table(results: list[BenchResult]) -> str:
    """A small Markdown table, plus the DALI/PyAV ratio when both ran."""
    lines = ["| loader | clips/s | frames/s |", "|---|---:|---:|"]
    lines += [f"| {r.backend} | {r.clips_per_s:.1f} | {r.frames_per_s:.0f} |" for r in results]
    by = {r.backend: r for r in results}
    if "dali" in by and "pyav" in by:
        lines.append(f"| DALI / PyAV | {by['dali'].clips_per_s / by['pyav'].clips_per_s:.2f}x | |")
    return "\n".join(lines)


def add_timing_args(p: argparse.ArgumentParser, batches: int) -> None:
    """The loader-timing flags of the data benchmarks (read back by timing_of)."""
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=16, help="frames per clip T")
    p.add_argument("--threads", type=int, default=2, help="decode threads per loader")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--batches", type=int, default=batches, help="timed batches per run")


def timing_of(args: argparse.Namespace) -> dict[str, int]:
    """bench_loader's timing keywords from add_timing_args' flags."""
    timing = {name: getattr(args, name) for name in ("batch_size", "threads", "prefetch", "warmup", "batches")}
    return {**timing, "num_frames": args.frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, help="shard dir (default: synthesize and prepare one in a temp dir)")
    p.add_argument("--split", default="train")
    add_timing_args(p, batches=120)
    p.add_argument("--videos", type=int, default=12, help="synthetic videos (without --shards)")
    p.add_argument("--size", type=int, default=112, help="synthetic frame size (without --shards)")
    p.add_argument("--fps", type=int, default=8, help="synthetic fps (without --shards)")
    p.add_argument("--backends", default="dali,pyav", help="comma-separated, in run order")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vbds-bench-") as tmp:
        shards = args.shards
        if shards is None:
            print(
                f"preparing {args.videos} synthetic videos ({args.size}x{args.size}, {args.fps} fps, VP9) in {tmp} ...",
                flush=True,
            )
            shards = make_corpus(Path(tmp), num_videos=args.videos, size=args.size, fps=args.fps)
        results = [bench_loader(shards, args.split, b, **timing_of(args)) for b in args.backends.split(",")]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}; "
        f"B={args.batch_size} T={args.frames} threads={args.threads} prefetch={args.prefetch} "
        f"warmup={args.warmup} timed={args.batches} batches"
    )
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
