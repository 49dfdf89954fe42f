"""Frozen visual models from files: a clip encoder by kind, and an exported encoder with its vocabulary as the
visual tokenizer every VideoBERT stage, evaluation and generation uses."""

from __future__ import annotations

from pathlib import Path

import torch

from videobert_ds.visual.autoencoder import AutoencoderClipEncoder
from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.s3d import S3DEncoder
from videobert_ds.visual.tokenizer import VisualTokenizer
from videobert_ds.visual.vocab import VisualVocabulary

ENCODER_TYPES = ("autoencoder", "s3d")


def load_encoder(kind: str, path: str | Path) -> ClipEncoder:
    """A frozen clip encoder by kind: "autoencoder" (an exported stage-1 dir) or "s3d" (torchvision-layout S3D
    weights from a local file). An unknown kind is a ValueError; a missing or unreadable file a
    FileNotFoundError or ValueError, each one line."""
    if kind == "autoencoder":
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no exported clip autoencoder at {path}")
        return AutoencoderClipEncoder.from_pretrained(str(path))
    if kind == "s3d":
        return S3DEncoder(path)
    raise ValueError(f"{kind!r} is not one of {', '.join(ENCODER_TYPES)}")


def load_visual_tokenizer(
    encoder_dir: str | Path, vocab_path: str | Path, device: torch.device, clips_per_batch: int = 256
) -> tuple[VisualTokenizer, VisualVocabulary]:
    """A frozen exported clip encoder + its vocabulary on `device`; a mismatch between them is a one-line
    ValueError."""
    encoder = AutoencoderClipEncoder.from_pretrained(str(encoder_dir))
    vocab = VisualVocabulary.load(vocab_path)
    return VisualTokenizer(encoder, vocab, clips_per_batch=clips_per_batch).to(device), vocab
