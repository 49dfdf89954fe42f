"""The exported model dir: what a self-contained VideoBERT model dir holds, how one is checked, and how one is
written. Hugging Face's `save_pretrained` layout (config.json + model.safetensors) plus the text tokenizer, the
visual vocabulary (with its key frames when it has them) and the clip encoder that turns frames into its words,
so evaluation, generation, distillation and fine-tuning need nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from videobert_ds.visual.keyframes import keyframes_path

VOCAB_FILE = "visual_vocab.safetensors"
ENCODER_DIR = "clip_encoder"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", VOCAB_FILE, f"{ENCODER_DIR}/config.json")


def missing_files(model_dir: str | Path, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    return [name for name in required if not (Path(model_dir) / name).is_file()]


def is_model_dir(model_dir: str | Path) -> bool:
    return not missing_files(model_dir)


def save_model_dir(
    model: Any, tokenizer: Any, out_dir: str | Path, *, vocab: str | Path, encoder_dir: str | Path
) -> None:
    """Weights + config, the text tokenizer, the visual vocabulary (and its key frames, so text -> video works from
    the dir) and the clip encoder, into `out_dir` (which the caller publishes atomically)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shutil.copy2(vocab, out_dir / VOCAB_FILE)
    if keyframes_path(vocab).is_file():
        shutil.copy2(keyframes_path(vocab), keyframes_path(out_dir / VOCAB_FILE))
    shutil.copytree(encoder_dir, out_dir / ENCODER_DIR, dirs_exist_ok=True)
