"""videobert-synth: write a synthetic narrated video corpus (the library is videobert_ds.data.synth).

    videobert-synth --out data/corpus --num-videos 200 --seed 0 [--workers 4]

Prints the path of the manifest.jsonl it wrote; bad arguments give one line, ``videobert-synth: error: ...``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videobert_ds.data.synth import synthesize


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments give one line, `videobert-synth: error: ...`, and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Write the corpus and print its manifest's path; 0 on success."""
    parser = _OneLineErrorParser(
        prog="videobert-synth",
        description="Write a synthetic narrated video corpus (mp4 + SRT + manifest.jsonl).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-videos", required=True, type=_positive_int, help="number of videos (>= 1)")
    parser.add_argument("--seed", type=_int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="encoding processes (default 1; the output does not depend on it)",
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    manifest = synthesize(args.out, args.num_videos, args.seed, workers=args.workers)
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
