"""Text -> video: sample a sequence of visual words from a sentence and show each word as the key frame of its
nearest training clip, as an image grid (the `videobert-generate` command, cli/generate.py).

The sequence is `[CLS] text [>] [MASK] * N [SEP]` (the pretraining layout, laid out by objectives.layout_rows);
the N video positions are filled left to right, each drawn from the masked visual-word head's distribution
at that position given the text and the words already drawn (temperature, top-k; greedy at temperature 0;
a seeded generator, so a seed always gives the same words). Every call makes exactly N forward passes
whatever it samples, so ranks stay matched under ZeRO-3 (the teacher's validation images use this too).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from videobert_ds.model.model_dir import ModelDirError, check_model_dir, features_encoder, run_dir_problem
from videobert_ds.model.specials import Specials, specials_from_config
from videobert_ds.objectives.layout import REPLACE_MASK, Row, layout_rows, to_device

log = logging.getLogger(__name__)

KEYFRAMES_FILE = "visual_vocab_keyframes.safetensors"  # keyframes_path(MODEL_DIR / "visual_vocab.safetensors")


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


def generation_inputs(
    text_ids: Sequence[Sequence[int]], num_words: int, sp: Specials, device: torch.device
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
    """WordPiece ids of each text (no special tokens), cut to max_text tokens as in training. A prompt that is cut
    is logged once (a warning naming both lengths): the words it loses are not seen by the model."""
    if not texts:
        return []
    keep = max(max_text, 0)
    full = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    for text, ids in zip(texts, full):
        if len(ids) > keep and (text, keep) not in _warned_cut:
            _warned_cut.add((text, keep))
            log.warning(
                "prompt %r is %d text tokens, longer than the %d the model takes before the video: using the first %d",
                text if len(text) <= 60 else text[:57] + "...",
                len(ids),
                keep,
                keep,
            )
    return [list(ids[:keep]) for ids in full]


_warned_cut: set[tuple[str, int]] = set()  # (prompt, length): the teacher's validation reuses its prompts


@torch.no_grad()
def sample_visual_words(
    model: nn.Module,
    sp: Specials,
    text_ids: Sequence[Sequence[int]],
    *,
    num_words: int = 8,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Visual-word ids (B, num_words) int64 on the CPU, one row per text (token ids from `prompt_ids`),
    sampled left to right from `model` (a VideoBertForPreTraining, whole or ZeRO-3-partitioned).
    temperature 0 = greedy; top_k 0 = the whole vocabulary. The same seed gives the same words."""
    check_sampling(temperature, top_k, seed)
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
            # Shift the best logit to 0 before dividing, in float64: any temperature > 0, however small, then
            # gives finite probabilities (a tiny one tends to greedy) instead of inf / inf = nan.
            logits = (logits - logits.max(-1, keepdim=True).values).double() / temperature
            if 0 < top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            w = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
        words[:, k] = w
        input_ids = input_ids.clone()
        input_ids[rows, positions[:, k]] = (w + lo).to(device)
    return words


SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes (negative seeds wrap around)


def check_sampling(temperature: float, top_k: int, seed: int) -> None:
    """ValueError (one line) for sampling settings that cannot sample: a temperature that is negative, NaN or
    infinite, a negative top_k, a seed outside torch's 64-bit range."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = the whole vocabulary), got {top_k}")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")


def render_grid(
    words: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    frames: torch.Tensor | np.ndarray,
    pad: int = 2,
    fill: int = 255,
) -> np.ndarray:
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


class GeneratorError(ValueError):
    """A model dir that cannot generate (missing files, no key frames, mismatched sizes): one line."""


def load_generator(model_dir: Path, device: torch.device) -> tuple[nn.Module, Any, Specials, Any]:
    """-> (model in eval mode on device, text tokenizer, Specials, KeyFrames) from an exported model dir."""
    # The cheap checks first: a run dir, a missing config, missing or truncated weights, no key frames.
    hint = run_dir_problem(model_dir)
    if hint:
        raise GeneratorError(hint)
    if not (model_dir / "config.json").is_file():
        raise GeneratorError(f"no exported VideoBERT model dir at {model_dir} (config.json missing)")
    try:
        check_model_dir(model_dir, encoder=False)  # generation needs no clip encoder
    except ModelDirError as err:
        raise GeneratorError(str(err)) from None
    kf_path = model_dir / KEYFRAMES_FILE
    if not kf_path.is_file():
        ident = features_encoder(model_dir)
        if ident:
            raise GeneratorError(
                f"this model's visual words come from pre-extracted features ({ident.get('source', '?')}): there are "
                "no key frames to show them; text -> video grids need a vocabulary built from frames"
            )
        raise GeneratorError(
            f"{model_dir} has no {KEYFRAMES_FILE}; its visual vocabulary must come from a "
            "build_vocab run that wrote key frames (keyframe_size > 0), re-exported with the model"
        )
    from transformers.utils import logging as hf_logging

    from videobert_ds.data.text import load_tokenizer
    from videobert_ds.model.videobert import VideoBertForPreTraining
    from videobert_ds.visual.keyframes import KeyFrames

    hf_logging.disable_progress_bar()  # a CLI's stderr is for its one-line errors
    try:
        keyframes = KeyFrames.load(kf_path)
        tokenizer = load_tokenizer(model_dir)
        model = VideoBertForPreTraining.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise GeneratorError(f"cannot load {model_dir}: {str(err).splitlines()[0]}") from None
    if not hasattr(model.config, "visual_vocab_size"):
        raise GeneratorError(f"{model_dir} is not a VideoBERT model dir (no visual_vocab_size in config.json)")
    if keyframes.num_words != model.config.visual_vocab_size:
        raise GeneratorError(
            f"{kf_path.name} holds {keyframes.num_words} key frames, the model "
            f"{model.config.visual_vocab_size} visual words"
        )
    return model, tokenizer, specials_from_config(model.config, tokenizer), keyframes
