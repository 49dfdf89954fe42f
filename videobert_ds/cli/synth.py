"""videobert-synth: write a synthetic narrated video corpus (the library is videobert_ds.data.synth).

    videobert-synth --out data/corpus --num-videos 200 --seed 0 [--workers 4]
        [--narration-noise 0.3] [--narration-offset 1.0] [--two-objects] [--distractor-motion]
        [--noisy-splits train]

The realism options are all off by default (the corpus is then unchanged); see videobert_ds.data.synth.Realism.

Prints the path of the manifest.jsonl it wrote; bad arguments give one line, ``videobert-synth: error: ...``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videobert_ds.data.synth import SPLITS, Realism, synthesize


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


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value}")
    return value


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SPLITS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma list of {','.join(SPLITS)}, got {text!r}")
    return names


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
    real = parser.add_argument_group("realism (all off by default: the corpus is then unchanged)")
    real.add_argument(
        "--narration-noise",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of cues (0..1) replaced by off-screen talk that does not describe the clip (default 0)",
    )
    real.add_argument(
        "--narration-offset",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="shift each cue by a random amount up to this many seconds from its action, within the video (default 0)",
    )
    real.add_argument(
        "--two-objects",
        action="store_true",
        help="add a second, smaller, still object of another colour and shape to each scene; never narrated",
    )
    real.add_argument(
        "--distractor-motion",
        action="store_true",
        help="add a small grey shape crossing each scene in another direction; never narrated",
    )
    real.add_argument(
        "--noisy-splits",
        type=_splits,
        default=("train",),
        metavar="LIST",
        help="splits whose narration gets noise and offset (default train: val/test references stay clean)",
    )
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    realism = Realism(
        narration_noise=args.narration_noise,
        narration_offset=args.narration_offset,
        two_objects=args.two_objects,
        distractor_motion=args.distractor_motion,
        noisy_splits=args.noisy_splits,
    )
    manifest = synthesize(args.out, args.num_videos, args.seed, workers=args.workers, realism=realism)
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
