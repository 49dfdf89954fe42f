"""The exported model dir: what a self-contained VideoBERT model dir holds, how one is checked, and how one is
written. Hugging Face's `save_pretrained` layout (config.json + model.safetensors) plus the text tokenizer, the
visual vocabulary (with its key frames when it has them) and the clip encoder that turns frames into its words,
so evaluation, generation, distillation and fine-tuning need nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

VOCAB_FILE = "visual_vocab.safetensors"
ENCODER_DIR = "clip_encoder"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", VOCAB_FILE, f"{ENCODER_DIR}/config.json")


def missing_files(model_dir: str | Path, required: tuple[str, ...] = REQUIRED_FILES) -> list[str]:
    return [name for name in required if not (Path(model_dir) / name).is_file()]


def is_model_dir(model_dir: str | Path) -> bool:
    return not missing_files(model_dir)


# What transformers' from_pretrained reads, in its order of preference; an export writes the first.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


FEATURES_ENCODER_TYPE = "features"  # clip_encoder/config.json's encoder_type when the words come from features


def features_encoder(model_dir: str | Path) -> dict[str, Any] | None:
    """The identity recorded in the model dir's clip_encoder/config.json when its visual words come from
    pre-extracted features (no encoder weights), else None."""
    try:
        config = json.loads((Path(model_dir) / ENCODER_DIR / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("encoder_type") == FEATURES_ENCODER_TYPE else None


def frames_problem(model_dir: str | Path) -> str | None:
    """One line when the model dir cannot turn frames into its visual words (they come from pre-extracted
    features), else None: what evaluation and anything else that decodes video checks first."""
    ident = features_encoder(model_dir)
    if ident is None:
        return None
    return (
        f"this model's visual words come from pre-extracted features ({ident.get('source', '?')}, "
        f"{ident.get('feature_dim', '?')}-d at {ident.get('rate', '?')}/s): no clip encoder turns frames into "
        "them; evaluate it on token shards / features of that dir (tokenize, then validation with data.tokens)"
    )


class ModelDirError(ValueError):
    """A model dir that cannot load (a run dir, no config, no or truncated weights): one line for a CLI."""


def run_dir_problem(model_dir: str | Path) -> str | None:
    """A one-line hint when `model_dir` is a training run dir rather than the model dir it exports, else None."""
    d = Path(model_dir)
    if (d / "config.json").is_file() or not d.is_dir():
        return None
    if (d / "final" / "config.json").is_file():
        return f"{d} is a training run dir; its exported model dir is {d / 'final'}"
    if (d / "config.yaml").is_file() or (d / "checkpoints").is_dir():
        return (
            f"{d} is a training run dir without final/ (the run has not finished, or stopped early): "
            f"export its newest checkpoint with `videobert-export {d} --out DIR`"
        )
    return None


def weights_problem(model_dir: str | Path) -> str | None:
    """Why `model_dir` holds no loadable weights (one line), or None. Reads only safetensors headers, which
    also catches an empty or truncated file, so a bad dir is reported before anything heavy is loaded."""
    from safetensors import safe_open

    d = Path(model_dir)
    found = next((d / name for name in WEIGHTS_FILES if (d / name).is_file()), None)
    if found is None:
        return f"{d} has no weights (no {WEIGHTS_FILES[0]}); export the run again with videobert-export"
    files = [found]
    if found.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(found.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{found} is not a readable weights index ({type(err).__name__}: {err})"
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            return f"{d} lacks weight files named in {found.name}: {', '.join(missing[:3])}"
        files = [d / s for s in shards]
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="numpy"):
                    pass
            except Exception as err:  # SafetensorError is no OSError/ValueError: header too small, incomplete...
                return f"{f} is unreadable ({str(err).splitlines()[0]}); export the run again with videobert-export"
        elif f.stat().st_size == 0:
            return f"{f} is empty; export the run again with videobert-export"
    return None


def check_model_dir(model_dir: str | Path, *, encoder: bool = True) -> None:
    """Raise ModelDirError (one line) unless `model_dir` has a readable config.json and weights (and, with
    `encoder`, so does its clip encoder). Cheap: nothing is loaded."""
    d = Path(model_dir)
    hint = run_dir_problem(d)
    if hint:
        raise ModelDirError(hint)
    dirs = [d, d / ENCODER_DIR] if encoder else [d]
    for sub in dirs:
        if not (sub / "config.json").is_file():
            raise ModelDirError(f"{sub} is not an exported VideoBERT model dir (no config.json)")
        try:
            config = json.loads((sub / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ModelDirError(f"{sub / 'config.json'} is unreadable ({err})") from None
        if not isinstance(config, dict):
            raise ModelDirError(f"{sub / 'config.json'} is not a JSON object")
        if sub != d and config.get("encoder_type") == FEATURES_ENCODER_TYPE:
            continue  # words from pre-extracted features: the encoder dir records their identity, holds no weights
        problem = weights_problem(sub)
        if problem:
            raise ModelDirError(problem)


def save_model_dir(
    model: Any, tokenizer: Any, out_dir: str | Path, *, vocab: str | Path, encoder_dir: str | Path
) -> None:
    """Weights + config, the text tokenizer, the visual vocabulary (and its key frames, so text -> video works from
    the dir) and the clip encoder, into `out_dir` (which the caller publishes atomically). `encoder_dir` is an
    encoder dir (an exported autoencoder, or a model dir's clip_encoder/), copied, or an S3D weights file,
    written as an S3D encoder dir (config.json + model.safetensors) at the vocabulary's clip length."""
    from videobert_ds.visual.keyframes import keyframes_path  # here: checking a dir should not import torch
    from videobert_ds.visual.loading import save_encoder_dir

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shutil.copy2(vocab, out_dir / VOCAB_FILE)
    if keyframes_path(vocab).is_file():
        shutil.copy2(keyframes_path(vocab), keyframes_path(out_dir / VOCAB_FILE))
    save_encoder_dir(encoder_dir, vocab, out_dir / ENCODER_DIR)
