"""`make bench-prepare`: videobert-prepare's throughput beside a plain ffmpeg command line doing the same work.

    python -m videobert_ds.bench.prepare [--videos 8] [--fps 10] [--size 128] [--threads 1] [--repeat 2]

Makes a few synthetic narrated videos (videobert_ds.data.synth), prepares them in one process (one rank; each
video in its per-video worker, as by default, and in-process with --video-timeout 0), then cuts exactly the clips
prepare wrote (the start and end in each sample's json) with one plain ffmpeg command a clip, the same filter and
the same VP9 settings, on the same number of threads:

    ffmpeg -ss S -t D -i IN -vf fps=F,scale=N:N:force_original_aspect_ratio=increase,crop=N:N
           -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -crf 32 -b:v 0 -lag-in-frames 0 -threads T -an OUT.webm

By default the process and its children are pinned to one core (--cpus), so wall-clock rates are per core. Prints
videos/s and clips/s (wall clock) and clips per CPU-second (per core: user + system time of the process and
its children), and prepare's ratio to ffmpeg on each. prepare also decodes every clip back to verify it (ffmpeg
does not), and decodes each source once for all its clips (ffmpeg seeks once a clip). ffmpeg is the one on PATH, else
the binary of the `imageio-ffmpeg` package.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Timing:
    wall: float
    cpu: float


def _cpu() -> float:
    """User + system seconds of this process and its waited-for children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def find_ffmpeg() -> str | None:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_prepare(manifest: Path, out: Path, fps: float, size: int, threads: int, timeout: float) -> Timing:
    from videobert_ds.data.prepare import prepare_corpus

    shutil.rmtree(out, ignore_errors=True)
    w0, c0 = time.perf_counter(), _cpu()
    with contextlib.redirect_stderr(io.StringIO()):  # its line per video
        prepare_corpus(manifest, out, fps=fps, size=size, decode_threads=threads, video_timeout=timeout,
                       progress=False, comm=None)  # fmt: skip
    return Timing(time.perf_counter() - w0, _cpu() - c0)


def clips_of(shards: Path) -> list[tuple[str, float, float]]:
    """(source video, start, end) of every sample prepare wrote, from the samples' json."""
    import webdataset as wds

    man = json.loads((shards / "manifest.json").read_text())
    clips = []
    for sh in man["shards"]:
        for s in wds.WebDataset([str(shards / sh["file"])], shardshuffle=False):
            meta = json.loads(s["json"])
            clips.append((meta["source"], float(meta["start"]), float(meta["end"])))
    return clips


def run_ffmpeg(
    ffmpeg: str, base: Path, clips: list[tuple[str, float, float]], fps: float, size: int, threads: int, out: Path
) -> Timing:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vf = f"fps={fps:g},scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"
    vp9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "32", "-b:v", "0"]
    vp9 += ["-lag-in-frames", "0", "-pix_fmt", "yuv420p", "-threads", str(threads)]
    w0, c0 = time.perf_counter(), _cpu()
    for i, (src, start, end) in enumerate(clips):
        cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-threads", str(threads), "-ss", f"{start:.3f}",
               "-t", f"{end - start:.3f}", "-i", str(base / src), "-vf", vf, *vp9, "-an", "-f", "webm",
               str(out / f"{i:06d}.webm")]  # fmt: skip
        subprocess.run(cmd, check=True)
    return Timing(time.perf_counter() - w0, _cpu() - c0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m videobert_ds.bench.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="decoder/encoder threads, both sides")
    p.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest is reported")
    p.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir, removed)")
    p.add_argument(
        "--cpus",
        type=int,
        default=1,
        help="pin this process and its children (prepare's worker, ffmpeg) to this many cores (0: no pinning); "
        "ffmpeg runs demux, decode, filter and encode in threads of their own, which take more than one core",
    )
    args = p.parse_args(argv)
    if args.cpus > 0:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        print("bench.prepare: error: no ffmpeg on PATH (apt install ffmpeg, or pip install -e '.[bench]')",
              file=sys.stderr)  # fmt: skip
        return 2
    from videobert_ds.data.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = args.workdir or Path(tmp)
        manifest = synthesize(root / "corpus", num_videos=args.videos, seed=0)
        kw = dict(fps=args.fps, size=args.size, threads=args.threads)
        logging.getLogger("videobert_ds.data.prepare").setLevel(logging.ERROR)  # the NVDEC size warning
        run_prepare(manifest, root / "warmup", timeout=0.0, **kw)  # imports, page cache: not timed
        worker = min((run_prepare(manifest, root / "shards", timeout=600.0, **kw) for _ in range(args.repeat)),
                     key=lambda t: t.wall)  # fmt: skip
        inproc = min((run_prepare(manifest, root / "shards0", timeout=0.0, **kw) for _ in range(args.repeat)),
                     key=lambda t: t.wall)  # fmt: skip
        clips = clips_of(root / "shards")
        plain = min((run_ffmpeg(ffmpeg, manifest.parent, clips, out=root / "ffmpeg", **kw) for _ in range(args.repeat)),
                    key=lambda t: t.wall)  # fmt: skip

    n, v = len(clips), args.videos
    print(f"prepare throughput: {v} synthetic videos, {n} clips, {args.size}px VP9 at {args.fps:g} fps, "
          f"{args.threads} thread(s), best of {args.repeat}, on {len(os.sched_getaffinity(0))} core(s); "
          f"ffmpeg: {ffmpeg}")  # fmt: skip
    print(f"{'':38s} {'videos/s':>9s} {'clips/s':>9s} {'clips/CPU-s':>12s}")
    rows = [("videobert-prepare (worker, default)", worker), ("videobert-prepare (--video-timeout 0)", inproc),
            ("ffmpeg, one command a clip", plain)]  # fmt: skip
    for name, t in rows:
        print(f"{name:38s} {v / t.wall:9.2f} {n / t.wall:9.1f} {n / t.cpu:12.1f}")
    print(f"ratio prepare / ffmpeg: {plain.wall / worker.wall:.2f}x wall, {plain.cpu / worker.cpu:.2f}x per CPU-second "
          f"(--video-timeout 0: {plain.wall / inproc.wall:.2f}x, {plain.cpu / inproc.cpu:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
