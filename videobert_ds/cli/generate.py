"""videobert-generate: text -> visual words -> a PNG grid of their key frames.

    videobert-generate --model runs/demo/teacher/final --text "a red circle moves left" --out grid.png

The work is videobert_ds.inference.text_to_video.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch and the model are imported in run() after the flags are checked: a bad flag is a one-line error at once.
PROG = "videobert-generate"


class UsageError(Exception):
    """A problem with the command line or its inputs: one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="exported model dir (teacher or student final/)")
    p.add_argument("--text", required=True, help="the sentence to generate from")
    p.add_argument("--out", required=True, help="PNG path for the image grid")
    p.add_argument("--num-words", type=int, default=8, help="visual words to sample (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="finite, >= 0; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest words; 0 = all (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, 0 <= seed < 2**64 (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    return p.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """UsageError (one line) for flags that cannot generate; nothing is imported or loaded yet."""
    if args.num_words < 1:
        raise UsageError(f"--num-words must be >= 1, got {args.num_words}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = the whole vocabulary), got {args.top_k}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    if Path(args.out).suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {args.out}")


def run(args: argparse.Namespace) -> torch.Tensor:
    check_flags(args)
    import torch
    from PIL import Image

    from videobert_ds.core.atomic import atomic_path
    from videobert_ds.inference.text_to_video import (
        GeneratorError,
        load_generator,
        max_text_tokens,
        max_words,
        prompt_ids,
        render_grid,
        sample_visual_words,
    )

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    try:
        model, tokenizer, sp, keyframes = load_generator(Path(args.model), device)
    except GeneratorError as err:
        raise UsageError(f"--model: {err}") from None
    if args.num_words > max_words(model.config):
        raise UsageError(
            f"--num-words {args.num_words} does not fit the model's positions (at most {max_words(model.config)})"
        )
    text_ids = prompt_ids(tokenizer, [args.text], max_text_tokens(model.config, args.num_words))
    words = sample_visual_words(
        model,
        sp,
        text_ids,
        num_words=args.num_words,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        device=device,
    )
    with atomic_path(out) as tmp:
        Image.fromarray(render_grid(words, keyframes.frames)).save(tmp, format="PNG")
    return words[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")  # e.g. a prompt cut to fit
    try:
        words = run(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(" ".join(str(w) for w in words.tolist()))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
