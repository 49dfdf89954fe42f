"""Frozen visual models from files: a clip encoder by kind, and an encoder with its vocabulary as the visual
tokenizer every VideoBERT stage, evaluation and generation uses.

Encoder kinds (what `encoder.type` / `visual.encoder_type` name):
  autoencoder  an exported stage-1 dir (config.json + model.safetensors of the clip autoencoder)
  s3d          torchvision-layout S3D weights in a local file (.pth/.pt/.safetensors), or an S3D encoder dir
               (config.json with `encoder_type: s3d` + model.safetensors): what a model dir's clip_encoder/
               holds when its vocabulary was built on S3D
  auto         by what is there: a file is S3D weights, a dir is what its config.json says
A vocabulary built from pre-extracted features (visual/features.py) has no frame encoder: it turns shards into
words only through the `tokenize` stage with the same features dir, and the stages after it train on those token
shards (`data.tokens`), where `load_visual_tokenizer(..., tokens=True)` gives a TokenShardWords in place of a
tokenizer. A model dir's clip_encoder/ then holds only config.json: `encoder_type: features` + the identity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NoReturn

import torch

from videobert_ds.visual.autoencoder import AutoencoderClipEncoder
from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.s3d import ENCODER_TYPE as S3D_TYPE
from videobert_ds.visual.s3d import S3DEncoder, read_dir_config
from videobert_ds.visual.tokenizer import VisualTokenizer
from videobert_ds.visual.vocab import FEATURES_ENCODER, VisualVocabulary, vocab_metadata

ENCODER_TYPES = ("autoencoder", "s3d")  # encoders of frames: every stage that decodes video accepts these
VOCAB_SOURCES = (*ENCODER_TYPES, FEATURES_ENCODER)  # what build_vocab (and tokenize) can build words from


def encoder_kind(path: str | Path) -> str:
    """ "s3d" for a weights file or an S3D encoder dir, "autoencoder" for any other dir (checked when loaded)."""
    p = Path(path)
    if p.is_file():
        return S3D_TYPE
    return S3D_TYPE if read_dir_config(p).get("encoder_type") == S3D_TYPE else "autoencoder"


def load_encoder(
    kind: str, path: str | Path, *, frames_per_clip: int = 0, resize: list[int] | tuple[int, int] | None = None
) -> ClipEncoder:
    """A frozen clip encoder by kind (see the module docstring). `frames_per_clip` (0 = the encoder's own: the
    autoencoder's trained clip length, an S3D dir's recorded one, else 30) and `resize` apply to S3D; the
    autoencoder's clip length is fixed by its weights, so another value is an error. An unknown kind is a
    ValueError; a missing or unreadable file a FileNotFoundError or ValueError, each one line."""
    if kind == "auto":
        kind = encoder_kind(path)
    if kind == "autoencoder":
        if encoder_kind(path) == S3D_TYPE and Path(path).exists():
            raise ValueError(f"{path} holds an S3D encoder, not a clip autoencoder: set the encoder type to s3d")
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no exported clip autoencoder at {path}")
        if resize:
            raise ValueError("resize applies to S3D only")
        encoder = AutoencoderClipEncoder.from_pretrained(str(path))
        if frames_per_clip and frames_per_clip != encoder.frames_per_clip:
            raise ValueError(
                f"the clip autoencoder at {path} encodes {encoder.frames_per_clip}-frame clips, not {frames_per_clip}"
            )
        return encoder
    if kind == S3D_TYPE:
        if Path(path).is_dir():
            cfg = read_dir_config(path)
            if cfg.get("encoder_type") != S3D_TYPE:
                raise FileNotFoundError(f"{path} is a folder but not an S3D encoder dir: S3D needs its weights file")
            frames_per_clip = frames_per_clip or int(cfg["frames_per_clip"])
            resize = resize if resize is not None else cfg.get("resize")
            path = Path(path) / "model.safetensors"
        return S3DEncoder(path, frames_per_clip=frames_per_clip or 30, resize=resize or None)
    raise ValueError(f"{kind!r} is not one of {', '.join(ENCODER_TYPES)}")


def check_frame_vocabulary(vocab_encoder: dict, vocab_path: str | Path) -> None:
    """A one-line ValueError when the vocabulary cannot be reached from frames (it was built on a features dir)."""
    if vocab_encoder.get("name") == FEATURES_ENCODER:
        raise ValueError(
            f"visual vocabulary {vocab_path} was built from pre-extracted features "
            f"({vocab_encoder.get('source', '?')}): no clip encoder turns frames into its words; "
            "tokenize the shards with the same features dir and train on the token shards"
        )


def features_problem(vocab_encoder: dict, tokens: str | Path | None) -> str | None:
    """One line when a run would need frames turned into the words of a vocabulary built from pre-extracted
    features (it reads no token shards: `tokens` empty), else None."""
    if vocab_encoder.get("name") != FEATURES_ENCODER or tokens:
        return None
    return (
        f"the visual vocabulary was built from pre-extracted features ({vocab_encoder.get('source', '?')}): "
        "no clip encoder turns frames into its words; run the tokenize stage with that features dir "
        "(visual.encoder=DIR) first and train on its token shards (data.tokens=TOKENIZE_RUN/tokens)"
    )


def encoder_problem(kind: str, path: str | Path, vocab_encoder: dict, tokens: str | Path | None = None) -> str | None:
    """Why the encoder `kind` at `path` cannot be the one a vocabulary (its recorded identity `vocab_encoder`)
    was fit on, in one line, or None. Cheap (reads config files only): what a stage's check() runs before any
    rank starts; the weights themselves are compared when the stage loads them. A features vocabulary needs no
    encoder when the run reads token shards (`tokens`), and cannot train without them."""
    name = vocab_encoder.get("name")
    if name == FEATURES_ENCODER:
        return features_problem(vocab_encoder, tokens)
    if kind not in (*ENCODER_TYPES, "auto"):
        return f"encoder type {kind!r} is not one of {', '.join(ENCODER_TYPES)}"
    if not Path(path).exists():
        return f"no clip encoder at {path}"
    kind = encoder_kind(path) if kind == "auto" else kind
    if (name == S3D_TYPE) != (kind == S3D_TYPE):
        return (
            f"the visual vocabulary was fit on {name}, the encoder type is {kind}: set the encoder type "
            f"({'s3d and the S3D weights file' if name == S3D_TYPE else 'autoencoder and the exported encoder dir'})"
        )
    if kind == S3D_TYPE:
        if Path(path).is_dir() and read_dir_config(path).get("encoder_type") != S3D_TYPE:
            return f"{path} is a folder, not S3D weights (a file) or an S3D encoder dir"
        return None
    if not (Path(path) / "config.json").is_file():
        return f"no exported clip encoder at {path}"
    enc_cfg = json.loads((Path(path) / "config.json").read_text())
    # The encoder's clip feature is its narration embedding when it has one (visual/autoencoder.py).
    dims = {
        "feature_dim": enc_cfg.get("embedding_dim") or enc_cfg.get("feature_dim"),
        "frames_per_clip": enc_cfg.get("frames_per_clip"),
    }
    for key, value in dims.items():
        if value != vocab_encoder.get(key):
            got = vocab_encoder.get(key)
            return f"the visual vocabulary was fit on a different clip encoder: {key} {got} != {value} of {path}"
    return None


def load_vocab_encoder(
    kind: str, path: str | Path, vocab: VisualVocabulary, vocab_path: str | Path = "visual vocabulary"
) -> ClipEncoder:
    """The encoder `vocab` was fit on, from `path`: an S3D encoder is built at the clip length and resize the
    vocabulary recorded, so a stage only needs the weights file. A foreign encoder is a one-line ValueError."""
    check_frame_vocabulary(vocab.encoder, vocab_path)
    kind = encoder_kind(path) if kind == "auto" else kind
    if kind == S3D_TYPE:
        encoder = load_encoder(kind, path, frames_per_clip=vocab.frames_per_clip, resize=vocab.encoder.get("resize"))
    else:
        encoder = load_encoder(kind, path)
    vocab.check_encoder(encoder)
    return encoder


class TokenShardWords:
    """In place of the VisualTokenizer for a vocabulary built from pre-extracted features, in a run that reads token
    shards: their batches carry the words, so only the clip length is needed; frames are refused in one line."""

    def __init__(self, vocab: VisualVocabulary, vocab_path: str | Path) -> None:
        self.vocab, self.vocab_path = vocab, vocab_path
        self.frames_per_clip = vocab.frames_per_clip

    def to(self, device: torch.device | str) -> TokenShardWords:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ValueError(
            f"visual vocabulary {self.vocab_path} was built from pre-extracted features "
            f"({self.vocab.encoder.get('source', '?')}): its words come from token shards, not from frames"
        )


def load_visual_tokenizer(
    encoder_path: str | Path,
    vocab_path: str | Path,
    device: torch.device,
    clips_per_batch: int = 256,
    encoder_type: str = "auto",
    tokens: bool = False,
) -> tuple[VisualTokenizer, VisualVocabulary]:
    """A frozen clip encoder + its vocabulary on `device`. `encoder_path` is an exported autoencoder dir, S3D
    weights or an S3D encoder dir (`encoder_type` "auto" tells them apart; a model dir's clip_encoder/ is
    either dir). A mismatch between encoder and vocabulary is a one-line ValueError. With `tokens` (the run reads
    token shards), a vocabulary built from pre-extracted features gives a TokenShardWords and no encoder is read;
    without, it is a one-line ValueError."""
    vocab = VisualVocabulary.load(vocab_path)
    if tokens and vocab.encoder.get("name") == FEATURES_ENCODER:
        return TokenShardWords(vocab, vocab_path), vocab  # type: ignore[return-value]
    encoder = load_vocab_encoder(encoder_type, encoder_path, vocab, vocab_path)
    return VisualTokenizer(encoder, vocab, clips_per_batch=clips_per_batch).to(device), vocab


def save_encoder_dir(source: str | Path, vocab_path: str | Path, out: str | Path) -> Path:
    """A model dir's clip_encoder/ from `source`: an encoder dir (autoencoder or S3D) is copied; S3D weights
    in a file are written as an S3D encoder dir at the vocabulary's clip length and resize (and checked
    against the vocabulary, so the dir reproduces its words). A vocabulary built from pre-extracted features has
    no encoder: config.json records `encoder_type: features` and its identity (`source` is not read)."""
    out = Path(out)
    identity = vocab_metadata(vocab_path)["encoder"]
    if identity.get("name") == FEATURES_ENCODER:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"encoder_type": FEATURES_ENCODER, **identity}, indent=2) + "\n")
        return out
    if Path(source).is_dir():
        shutil.copytree(source, out, dirs_exist_ok=True)
        return out
    vocab = VisualVocabulary.load(vocab_path)
    encoder = load_vocab_encoder(S3D_TYPE, source, vocab, vocab_path)
    assert isinstance(encoder, S3DEncoder)
    return encoder.save_dir(out)
