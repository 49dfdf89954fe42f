"""videobert-prepare: raw videos + transcripts -> WebDataset tar shards (the library is videobert_ds.data.prepare).

    videobert-prepare --manifest corpus/manifest.jsonl --out shards --fps 10 --size 128
    mpirun -n 8 videobert-prepare --manifest ... --out shards      # ranks split the inputs (mpi4py)
    videobert-prepare --manifest ... --out shards --resume         # continue a killed run (same command)
    videobert-prepare --manifest more.jsonl --out shards --append  # add videos as new shards

Errors are one line, ``videobert-prepare: error: ...``, printed once per job (by launcher rank 0); exit status
2 for bad arguments or an output directory that is in use (``.prepare.lock``) or cannot be written, 1 when no
sample was written (then nothing is published; the report goes to report.failed.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from videobert_ds.data.prepare import PROG, PrepareError, PrepareOptions, launcher_rank, prepare_corpus
from videobert_ds.data.shards import FAILED_REPORT
from videobert_ds.data.video_io import CODECS


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        _fail(message)


def _fail(message: str, code: int = 2) -> NoReturn:
    if launcher_rank() == 0:  # one line per job, not one per MPI rank
        print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _positive(kind: type) -> Any:
    """An argparse type: a finite number of ``kind`` > 0."""

    def conv(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {s!r}")
        return v

    conv.__name__ = kind.__name__
    return conv


def build_parser() -> argparse.ArgumentParser:
    """The videobert-prepare command line; its defaults are PrepareOptions'."""
    p = _Parser(
        prog=PROG,
        description="Cut raw videos + transcripts into WebDataset tar shards of "
        "VideoBERT samples (one clip + json per transcript cue).",
    )
    p.add_argument("--manifest", type=Path, required=True, help="input JSONL, one video a line")
    p.add_argument("--out", type=Path, required=True, help="shard directory to write")
    d = PrepareOptions()
    p.add_argument("--codec", choices=sorted(CODECS), default=d.codec, help="clip codec: vp9 (webm) or h264 (mp4)")
    p.add_argument("--fps", type=_positive(float), default=d.fps, help="output frame rate")
    p.add_argument(
        "--size",
        type=_positive(int),
        default=d.size,
        help=f"output frames are SIZE x SIZE (default {d.size}: the least NVDEC decodes VP9 at on a GPU)",
    )
    p.add_argument("--samples-per-shard", type=_positive(int), default=d.samples_per_shard)
    p.add_argument(
        "--window",
        type=_positive(float),
        default=d.window,
        help="seconds per video-only sample (videos without transcript)",
    )
    p.add_argument("--max-clip-seconds", type=_positive(float), default=d.max_clip_seconds, help="longer cues are cut")
    p.add_argument("--min-clip-seconds", type=float, default=d.min_clip_seconds, help="shorter cues are skipped")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads, help="source decoder threads (0: auto)")
    p.add_argument(
        "--video-timeout",
        type=float,
        default=d.video_timeout,
        metavar="SECONDS",
        help=f"skip a video (reason video_timeout) still not done after SECONDS (default {d.video_timeout:g}; 0: no "
        "limit); each video runs in a worker process that is killed at the limit",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared corpus in --out")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run killed in --out (same command, options and number of ranks): its finished shards "
        "are kept, only the rest is processed; starts afresh when there is none, does nothing when it finished",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add these inputs' videos to the corpus in --out as new shards (its own stay untouched); videos "
        "whose id it has are skipped (already_in_corpus)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The PrepareOptions fields given on the command line (each flag's dest is the field's name)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}


def main(argv: list[str] | None = None) -> int:
    """Prepare the corpus; 0 on success, 2 for bad arguments, 1 when no sample was written."""
    args = build_parser().parse_args(argv)
    if not args.manifest.is_file():
        _fail(f"manifest not found: {args.manifest}")
    try:
        report = prepare_corpus(
            args.manifest,
            args.out,
            overwrite=args.overwrite,
            resume=args.resume,
            append=args.append,
            progress=args.progress,
            **_options(args),
        )
    except PrepareError as e:
        _fail(str(e))
    if launcher_rank() == 0:
        this = report.get("runs", [report])[-1]  # after --append: this run's counts (the report sums all runs)
        skipped = this["inputs_seen"] - this["inputs_written"]
        print(
            f"{PROG}: {this['samples_written']} samples from {this['inputs_seen']} inputs "
            f"({skipped} skipped) -> {args.out} {this['samples_per_split']}",
            file=sys.stderr,
        )
    if report["samples_written"] == 0:
        _fail(f"no samples written, nothing published (reasons in {args.out / FAILED_REPORT})", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
