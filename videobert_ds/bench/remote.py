"""Loader throughput from an HTTP server on loopback vs the same shards as a local folder.

    python -m videobert_ds.bench.remote [--shards DIR] [--backend dali] [--repeats 3]

The shard dir is served by `python -m http.server` on 127.0.0.1 in its own process (as a shard server would be);
the loader reads `http://127.0.0.1:PORT` through the webdataset library's gopen (curl). Local and HTTP runs
alternate, --repeats of each, and the fastest of each counts (the machine may be shared). Without --shards a small
synthetic corpus is prepared (VP9) in a temporary directory. Goal: HTTP >= 0.9x local clips/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from videobert_ds.bench.data import BenchResult, add_timing_args, bench_loader, make_corpus, timing_of
from videobert_ds.bench.table import print_table


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `folder` from a `python -m http.server` process, while the context is open."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # up within a few seconds
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/manifest.json", timeout=1).read()  # noqa: S310 (loopback)
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the HTTP server on {url} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def compare(shards: Path, *, backend: str, repeats: int, **timing: int) -> dict[str, BenchResult]:
    """The fastest of `repeats` alternating runs from the local folder and over HTTP."""
    best: dict[str, BenchResult] = {}
    with served(shards) as url:
        for _ in range(repeats):
            for name, location in (("local", shards), ("http", url)):
                r = bench_loader(location, "train", backend, **timing)
                r.backend = name
                if name not in best or r.clips_per_s > best[name].clips_per_s:
                    best[name] = r
    return best


def _corpus(work: Path, videos: int, samples_per_shard: int) -> Path:
    """Synthetic 112-px VP9 shards of `samples_per_shard` clips (shards are far larger in practice: per-shard
    start-up, a curl process and a request, is what an HTTP loader pays on top of a local one)."""
    return make_corpus(work, num_videos=videos, size=112, fps=8, samples_per_shard=samples_per_shard)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, help="shard dir (default: synthesize and prepare one in a temp dir)")
    p.add_argument("--backend", default="dali", choices=("dali", "pyav"))
    add_timing_args(p, batches=60)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the fastest counts")
    p.add_argument("--videos", type=int, default=24, help="synthetic videos (without --shards)")
    p.add_argument("--samples-per-shard", type=int, default=128, help="synthetic shards' size (without --shards)")
    args = p.parse_args(argv)
    timing = timing_of(args)
    with tempfile.TemporaryDirectory(prefix="vbds-bench-") as tmp:
        shards = args.shards or _corpus(Path(tmp), args.videos, args.samples_per_shard)
        best = compare(shards.resolve(), backend=args.backend, repeats=args.repeats, **timing)
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, load {load:.1f}; backend={args.backend} "
        f"B={args.batch_size} T={args.frames} threads={args.threads} timed={args.batches} batches, "
        f"fastest of {args.repeats}"
    )
    local, http = best["local"], best["http"]
    rows = [(r.backend, f"{r.clips_per_s:.1f}", f"{r.frames_per_s:.0f}") for r in (local, http)]
    rows.append(("HTTP / local", f"{http.clips_per_s / local.clips_per_s:.2f}x", ""))
    print_table(("shards", "clips/s", "frames/s"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
