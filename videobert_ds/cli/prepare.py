"""videobert-prepare: raw videos + transcripts -> WebDataset tar shards (the library is videobert_ds.data.prepare).

    videobert-prepare --manifest corpus/manifest.jsonl --out shards --fps 10 --size 128
    mpirun -n 8 videobert-prepare --manifest ... --out shards      # ranks split the inputs (mpi4py)
    videobert-prepare --manifest ... --out shards --resume         # continue a killed run (same command)
    videobert-prepare --manifest more.jsonl --out shards --append  # add videos as new shards
    videobert-prepare --format youcook2 --annotations youcookii_annotations_trainval.json --videos raw --out shards

``--format howto100m | youcook2 | webvid | msrvtt`` reads a published annotation file (``--help`` and README.md list
the files each reads) and finds its videos by id under ``--videos``.

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

from videobert_ds.data.annotations import FORMATS, VIDEO_EXTENSIONS, AnnotationSource
from videobert_ds.data.prepare import PROG, PrepareError, PrepareOptions, launcher_rank, prepare_corpus
from videobert_ds.data.prepare.entries import InputSource, ManifestSource
from videobert_ds.data.shards import FAILED_REPORT
from videobert_ds.data.video_io import CODECS

_FORMATS = """input formats (--format; videos are found by id anywhere under --videos, as .{exts}):
  jsonl      --manifest FILE: one JSON object a line (the default)
  howto100m  caption.json: {{id: {{"start": [...], "end": [...], "text": [...]}}}}; ASR cues, all train
  youcook2   youcookii_annotations_trainval.json: one sample per segment; training/validation/testing
             -> train/val/test
  webvid     results_*.csv (videoid, contentUrl, duration, page_dir, name): one captioned clip per video;
             split from the file name (val, test, else train)
  msrvtt     train_val_videodatainfo.json, test_videodatainfo.json: one sample of the clip per caption;
             train/validate/test -> train/val/test
an annotated video with no file under --videos is skipped as video_missing (listed in report.json)""".format(
    exts=" .".join(sorted(VIDEO_EXTENSIONS))
)


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
        description="Cut raw videos + transcripts (a JSONL manifest or a published annotation file) into\n"
        "WebDataset tar shards of VideoBERT samples (one clip + json per transcript cue or caption).",
        epilog=_FORMATS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--format",
        choices=["jsonl", *FORMATS],
        default=None,
        help="input format (default jsonl: --manifest; the others read --annotations and --videos, see below)",
    )
    p.add_argument("--manifest", type=Path, help="input JSONL, one video a line (--format jsonl)")
    p.add_argument("--annotations", type=Path, metavar="FILE", help="published annotation file (--format NAME)")
    p.add_argument("--videos", type=Path, metavar="DIR", help="folder holding the annotated videos (--format NAME)")
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


def _source(args: argparse.Namespace) -> InputSource:
    """The run's input: the --manifest, or a --format's --annotations file and --videos folder."""
    fmt = args.format or ("jsonl" if args.annotations is None else None)
    if fmt is None:
        _fail(f"--annotations needs --format ({', '.join(FORMATS)})")
    if fmt == "jsonl":
        if args.annotations is not None or args.videos is not None:
            _fail(f"--annotations and --videos go with --format {'|'.join(FORMATS)}; --format jsonl reads --manifest")
        if args.manifest is None:
            _fail("the following arguments are required: --manifest (or --format NAME --annotations FILE --videos DIR)")
        source: InputSource = ManifestSource(args.manifest)
    else:
        if args.manifest is not None:
            _fail(f"--format {fmt} reads --annotations and --videos, not --manifest")
        missing = [flag for flag, v in (("--annotations", args.annotations), ("--videos", args.videos)) if v is None]
        if missing:
            _fail(f"--format {fmt} needs {' and '.join(missing)}")
        source = AnnotationSource(fmt, args.annotations, args.videos)
    try:
        source.check()
    except PrepareError as e:
        _fail(str(e))
    return source


def main(argv: list[str] | None = None) -> int:
    """Prepare the corpus; 0 on success, 2 for bad arguments, 1 when no sample was written."""
    args = build_parser().parse_args(argv)
    source = _source(args)
    try:
        report = prepare_corpus(
            source,
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
