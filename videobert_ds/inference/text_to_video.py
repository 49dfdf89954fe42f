"""videobert-generate: text -> video. Sample a sequence of visual words from a sentence and show each word
as the key frame of its nearest training clip, as an image grid.

    videobert-generate --model runs/teacher/final --text "a red circle moves left" --out grid.png

The sequence is `[CLS] text [>] [MASK] * N [SEP]` (the pretraining layout, laid out by objectives.layout_rows);
the N video positions are filled left to right, each drawn from the masked visual-word head's distribution
at that position given the text and the words already drawn (temperature, top-k; greedy at temperature 0;
a seeded generator, so a seed always gives the same words). Every call makes exactly N forward passes
whatever it samples, so ranks stay matched under ZeRO-3 (the teacher's validation images use this too).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from videobert_ds.objectives.pretraining import REPLACE_MASK, Row, Specials, layout_rows, to_device

PROG = "videobert-generate"
KEYFRAMES_FILE = "visual_vocab_keyframes.safetensors"  # keyframes_path(MODEL_DIR / "visual_vocab.safetensors")


def specials_from_config(config: Any, tokenizer: Any) -> Specials:
    """The special ids of an exported model (its config.json), as the training stages define them."""
    ids = config.special_token_ids
    return Specials(cls=ids["cls"], sep=ids["sep"], mask=ids["mask"], pad=ids["pad"], video_sep=ids["video_sep"],
                    text_vocab_size=int(config.text_vocab_size), visual_vocab_size=int(config.visual_vocab_size),
                    first_regular_text=max(tokenizer.all_special_ids) + 1)


def max_words(config: Any) -> int:
    """The longest visual-word sequence the model's positions cover after a text of max_text_tokens(config)."""
    offset = getattr(config, "video_position_offset", None)
    if offset is None:  # plain positions: text and video share 0..L-1
        return int(config.max_position_embeddings) - 3
    return int(config.max_position_embeddings) - int(offset) - 2  # [>] at offset, words, [SEP]


def max_text_tokens(config: Any, num_words: int) -> int:
    """Text tokens that fit before `num_words` visual words (video positions start at the configured offset)."""
    offset = getattr(config, "video_position_offset", None)
    if offset is None:
        return int(config.max_position_embeddings) - 3 - num_words
    return int(offset) - 2


def generation_inputs(text_ids: Sequence[Sequence[int]], num_words: int, sp: Specials, device: torch.device
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for `[CLS] text [>] [MASK]*N [SEP]` per text, and the video positions (B, N)."""
    if num_words < 1:
        raise ValueError(f"num_words must be >= 1, got {num_words}")
    longest = max((len(t) for t in text_ids), default=0)
    rows = [Row(list(t), [(i, c) for c in range(num_words)]) for i, t in enumerate(text_ids)]
    host = layout_rows(rows, num_words, sp, max_seq_len=longest + 3 + num_words)
    is_video = host.video_src >= 0
    host.visual_masked = is_video  # every video position starts as [MASK]
    host.visual_replace = torch.where(is_video, REPLACE_MASK, host.visual_replace)
    positions = torch.stack([row.nonzero().flatten() for row in is_video])
    if positions.shape != (len(rows), num_words):
        raise ValueError(f"expected {num_words} video positions per text, got {tuple(positions.shape)}")
    placeholder = torch.zeros((len(rows), num_words), dtype=torch.long, device=device)
    inputs = to_device(host, placeholder, None, sp, device)
    return {k: inputs[k] for k in ("input_ids", "token_type_ids", "attention_mask")}, positions.to(device)


def prompt_ids(tokenizer: Any, texts: Sequence[str], max_text: int) -> list[list[int]]:
    """WordPiece ids of each text (no special tokens), cut to max_text tokens as in training."""
    if max_text < 1:
        return [[] for _ in texts]
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_text)["input_ids"]


@torch.no_grad()
def sample_visual_words(model: nn.Module, sp: Specials, text_ids: Sequence[Sequence[int]], *, num_words: int = 8,
                        temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Visual-word ids (B, num_words) int64 on the CPU, one row per text (token ids from `prompt_ids`),
    sampled left to right from `model` (a VideoBertForPreTraining, whole or ZeRO-3-partitioned).
    temperature 0 = greedy; top_k 0 = the whole vocabulary. The same seed gives the same words."""
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
    if not text_ids:
        raise ValueError("no texts to generate from")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = [list(t) for t in text_ids]
    inputs, positions = generation_inputs(ids, num_words, sp, device)
    input_ids = inputs["input_ids"]
    rows = torch.arange(len(ids), device=device)
    gen = torch.Generator().manual_seed(int(seed))  # on the CPU: the same draws on any device
    lo, hi = sp.text_vocab_size, sp.text_vocab_size + sp.visual_vocab_size
    words = torch.zeros((len(ids), num_words), dtype=torch.long)
    for k in range(num_words):
        hidden, _ = model(input_ids, inputs["token_type_ids"], inputs["attention_mask"])
        logits = model.token_logits(hidden[rows, positions[:, k]])[:, lo:hi].float().cpu()
        if temperature == 0:
            w = logits.argmax(-1)
        else:
            logits = logits / temperature
            if 0 < top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            w = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
        words[:, k] = w
        input_ids = input_ids.clone()
        input_ids[rows, positions[:, k]] = (w + lo).to(device)
    return words


def render_grid(words: torch.Tensor | np.ndarray | Sequence[Sequence[int]], frames: torch.Tensor | np.ndarray,
                pad: int = 2, fill: int = 255) -> np.ndarray:
    """Visual-word ids (B, N) -> uint8 image (B*h + (B+1)*pad, N*w + (N+1)*pad, 3): row b shows sequence b,
    each word as its key frame (frames (V, h, w, 3) uint8), separated by `fill`-valued (white) lines."""
    frames = np.asarray(frames.cpu() if torch.is_tensor(frames) else frames, dtype=np.uint8)
    ids = np.asarray(words.cpu() if torch.is_tensor(words) else words, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.size and (ids.min() < 0 or ids.max() >= frames.shape[0]):
        raise ValueError(f"visual word ids must be in [0, {frames.shape[0]}), got {ids.min()}..{ids.max()}")
    b, n = ids.shape
    _, h, w, _ = frames.shape
    grid = np.full((b * h + (b + 1) * pad, n * w + (n + 1) * pad, 3), fill, dtype=np.uint8)
    for r in range(b):
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = frames[ids[r, c]]
    return grid


def prompt_tag(prompt: str) -> str:
    """A TensorBoard tag for a prompt: `text_to_video/<words joined by _>` (stable across validations)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:60]
    return f"text_to_video/{slug or 'video_only'}"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A problem with the command line or its inputs: one line, exit code 2."""


def load_generator(model_dir: Path, device: torch.device) -> tuple[nn.Module, Any, Specials, Any]:
    """-> (model in eval mode on device, text tokenizer, Specials, KeyFrames) from an exported model dir."""
    from videobert_ds.data.text import load_tokenizer
    from videobert_ds.model.videobert import VideoBertForPreTraining
    from videobert_ds.visual.keyframes import KeyFrames

    if not (model_dir / "config.json").is_file():
        raise UsageError(f"--model: no exported VideoBERT model dir at {model_dir} (config.json missing)")
    kf_path = model_dir / KEYFRAMES_FILE
    if not kf_path.is_file():
        raise UsageError(f"--model: {model_dir} has no {KEYFRAMES_FILE}; its visual vocabulary must come from a "
                         "build_vocab run that wrote key frames (keyframe_size > 0), re-exported with the model")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a CLI's stderr is for its one-line errors
    try:
        keyframes = KeyFrames.load(kf_path)
        tokenizer = load_tokenizer(model_dir)
        model = VideoBertForPreTraining.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise UsageError(f"--model: cannot load {model_dir}: {str(err).splitlines()[0]}") from None
    if not hasattr(model.config, "visual_vocab_size"):
        raise UsageError(f"--model: {model_dir} is not a VideoBERT model dir (no visual_vocab_size in config.json)")
    if keyframes.num_words != model.config.visual_vocab_size:
        raise UsageError(f"--model: {kf_path.name} holds {keyframes.num_words} key frames, the model "
                         f"{model.config.visual_vocab_size} visual words")
    return model, tokenizer, specials_from_config(model.config, tokenizer), keyframes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="exported model dir (teacher or student final/)")
    p.add_argument("--text", required=True, help="the sentence to generate from")
    p.add_argument("--out", required=True, help="PNG path for the image grid")
    p.add_argument("--num-words", type=int, default=8, help="visual words to sample (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest words; 0 = all (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> torch.Tensor:
    from PIL import Image

    if args.num_words < 1:
        raise UsageError(f"--num-words must be >= 1, got {args.num_words}")
    if args.temperature < 0 or args.top_k < 0:
        raise UsageError(f"--temperature and --top-k must be >= 0, got {args.temperature} and {args.top_k}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {out}")
    model, tokenizer, sp, keyframes = load_generator(Path(args.model), device)
    if args.num_words > max_words(model.config):
        raise UsageError(f"--num-words {args.num_words} does not fit the model's positions (at most "
                         f"{max_words(model.config)})")
    text_ids = prompt_ids(tokenizer, [args.text], max_text_tokens(model.config, args.num_words))
    words = sample_visual_words(model, sp, text_ids, num_words=args.num_words, temperature=args.temperature,
                                top_k=args.top_k, seed=args.seed, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    Image.fromarray(render_grid(words, keyframes.frames)).save(tmp, format="PNG")
    tmp.replace(out)
    return words[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
