"""Token shards (stage 2b, `tokenize`): each clip shard's samples with their visual words already computed, so the
teacher, the student and fine-tuning train without decoding video or running the clip encoder.

    RUN_DIR/tokens/
      shard-NNNNNN.tar     one per source shard, same name, same samples in the same order:
                             {key}.json      the source sample's json, byte for byte (text, labels, times, ...)
                             {key}.ids.npy   int32 (n,): the visual word of each whole clip (n = valid clips)
                             {key}.feat.npy  float16 (n, D): the frozen encoder's clip features (the masked
                                             clip-feature regression's targets)
      identity.json        what the shards were made from (written first: a resumed run checks it)
      manifest.json        identity + shards, splits, sample counts (written last: marks the dir complete)

A run reads them with `data.tokens=RUN_DIR/tokens` (TokenLoader): the same per-epoch sample plan as the clip loader
(sampling.py over the same shard counts), so ranks, epochs and resume positions give the same samples in the same
order, and each batch carries visual-word ids and features instead of frames (TokenBatch). The manifest records
the clip encoder's identity (name, frames per clip, feature width, weights hash) and the vocabulary file's hash:
`check_tokens` turns a mismatch with the run's vocabulary into a one-line ConfigError.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videobert_ds.core.config import ConfigError
from videobert_ds.data.decoders.base import to_device
from videobert_ds.data.position import EpochPosition
from videobert_ds.data.sampling import ShardInfo, steps_per_epoch

FORMAT = "videobert-token-shards-v1"
MANIFEST = "manifest.json"
IDENTITY = "identity.json"
IDS, FEATS = "ids.npy", "feat.npy"
# What must agree between an identity.json and a resumed run for finished shards to be kept.
IDENTITY_KEYS = ("format", "encoder", "vocab", "num_frames", "source")


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (cached per path, size and mtime: a check and a setup hash it once)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def vocab_identity(path: str | Path) -> dict[str, Any]:
    """A vocabulary file's identity: its bytes' hash and size (the path is recorded for messages only)."""
    return {"sha256": file_sha256(path), "bytes": os.path.getsize(path), "path": str(Path(path).resolve())}


def sample_files(meta_json: bytes, ids: np.ndarray, feats: np.ndarray) -> dict[str, bytes]:
    """One token-shard sample's members (without its key)."""

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()

    return {"json": meta_json, IDS: npy(ids.astype(np.int32)), FEATS: npy(feats.astype(np.float16))}


def read_npy(data: bytes, descr: str) -> np.ndarray:
    """The flat array of a version-1 .npy member holding `descr` (e.g. "<i4"), read without np.load: its header
    parse (ast.literal_eval) was a fifth of the token loader's time. Anything else falls back to np.load."""
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:end]
        if f"'descr': '{descr}'".encode() in header and b"'fortran_order': False" in header:
            return np.frombuffer(data, dtype=descr, offset=end)
    return np.load(io.BytesIO(data), allow_pickle=False).astype(descr).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Manifest and checks
# ---------------------------------------------------------------------------------------------


def read_token_manifest(tokens: str | Path) -> dict[str, Any]:
    """manifest.json of a token dir; a missing or foreign one is a one-line ConfigError."""
    path = Path(tokens) / MANIFEST
    if not path.is_file():
        hint = " (an unfinished tokenize run: run it again to finish)" if (Path(tokens) / IDENTITY).is_file() else ""
        raise ConfigError(f"data.tokens: no token shards at {tokens} (missing {MANIFEST}){hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.tokens: {path} is unreadable ({err}); run tokenize again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"data.tokens: {tokens} is not a token shard dir (format {manifest.get('format')!r})")
    return manifest


def check_tokens(
    tokens: str | Path, vocab: str | Path, encoder: dict[str, Any], num_frames: int, where: str = "visual.vocab"
) -> dict[str, Any]:
    """The token dir a run reads must come from the run's own vocabulary (same file bytes) and the encoder that
    vocabulary was fit on (`encoder`: the identity the vocabulary records), and cover `num_frames` frames per
    sample. Each mismatch is a one-line ConfigError; -> the manifest."""
    m = read_token_manifest(tokens)
    have, want = m["vocab"], vocab_identity(vocab)
    if have["sha256"] != want["sha256"]:
        raise ConfigError(
            f"data.tokens: {tokens} was tokenized with another visual vocabulary ({have['path']}, sha256 "
            f"{have['sha256'][:12]}) than {where} {vocab} (sha256 {want['sha256'][:12]}); run tokenize with it"
        )
    made = m["encoder"]
    diffs = [f"{k} {made.get(k)!r} != {encoder.get(k)!r}" for k in sorted(encoder) if made.get(k) != encoder.get(k)]
    if diffs:
        raise ConfigError(f"data.tokens: {tokens} was tokenized with another clip encoder: " + "; ".join(diffs))
    if num_frames > int(m["num_frames"]):
        raise ConfigError(
            f"data.num_frames ({num_frames}) exceeds the {m['num_frames']} frames per sample {tokens} was tokenized "
            f"from; run tokenize with data.num_frames={num_frames} or lower data.num_frames"
        )
    return m


def token_split_shards(tokens: str | Path, manifest: dict[str, Any], split: str) -> list[ShardInfo]:
    """The split's token shards in manifest order; ValueError for a split the dir lacks (as the clip loader's)."""
    shards = [
        ShardInfo(Path(tokens) / e["file"], int(e["num_samples"])) for e in manifest["shards"] if e["split"] == split
    ]
    if not shards:
        splits = sorted({e["split"] for e in manifest["shards"]})
        raise ValueError(f"split {split!r} is not in {tokens} (splits: {', '.join(splits) or 'none'})")
    return shards


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    """One batch for the trainer, from token shards: what the frames path computes on the device from
    ClipBatch.frames (VisualTokenizer: ids, valid, features), already there."""

    ids: torch.Tensor  # int64 (B, n_clips) visual-word ids on the loader's device; 0 where not valid
    valid: torch.Tensor  # bool (B, n_clips): clip c is whole within the sample's frames
    features: torch.Tensor  # float16 (B, n_clips, D) clip features; 0 where not valid
    num_frames: torch.Tensor  # int64 (B,): min(json num_frames, span), as ClipBatch's
    meta: list[dict[str, Any]]  # per sample: its json plus "__key__"
    span: int  # frames per sample the batch stands for (the run's data.num_frames): n_clips = span // fpc
    host: Any = field(default=None, repr=False)  # the stage's host-side inputs, set by the trainer's prefetch

    def to(self, device: torch.device) -> TokenBatch:
        """This batch with its tensors on `device` (to a GPU through pinned memory, asynchronously): a batch read
        in the trainer's worker process is built on the host."""
        moved = {k: to_device(getattr(self, k), device) for k in ("ids", "valid", "features", "num_frames")}
        return replace(self, **moved)


def frames_span(batch: Any) -> int:
    """Frames per sample a loader batch spans: a ClipBatch's decoded length, a TokenBatch's span."""
    frames = getattr(batch, "frames", None)
    return int(frames.shape[1]) if frames is not None else int(batch.span)


class TokenLoader(EpochPosition[TokenBatch]):
    """Deterministic, resumable batches of visual words for one rank: ClipLoader's contract (state_dict,
    load_state_dict, set_epoch, steps_per_epoch, close) over token shards. Build with build_token_loader."""

    def __init__(
        self,
        tokens: str | Path,
        split: str,
        batch_size: int,
        num_frames: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1 or num_frames < 1:
            raise ValueError(f"batch_size and num_frames must be >= 1, got {batch_size} and {num_frames}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        manifest = read_token_manifest(tokens)
        if num_frames > int(manifest["num_frames"]):
            raise ValueError(f"num_frames {num_frames} exceeds the {manifest['num_frames']} the tokens cover")
        self.shards = token_split_shards(tokens, manifest, split)
        self.split, self.batch_size, self.num_frames = split, batch_size, num_frames
        self.frames_per_clip, self.feature_dim = int(manifest["frames_per_clip"]), int(manifest["feature_dim"])
        self.n_clips = num_frames // self.frames_per_clip
        if self.n_clips < 1:
            raise ValueError(f"num_frames {num_frames} is shorter than one clip ({self.frames_per_clip})")
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.shuffle_buffer = shuffle_buffer
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.backend = "tokens"
        steps = steps_per_epoch([s.num_samples for s in self.shards], world_size, batch_size)
        self._start(steps, sum(s.num_samples for s in self.shards))

    def _open_stream(self) -> Iterator[list[dict[str, Any]]]:
        return self._batch_stream(self.shards)

    def _emit(self, samples: list[dict[str, Any]]) -> TokenBatch:
        b, n, fpc = len(samples), self.n_clips, self.frames_per_clip
        ids = np.zeros((b, n), dtype=np.int64)
        feats = np.zeros((b, n, self.feature_dim), dtype=np.float16)
        counts, meta = [], []
        for i, s in enumerate(samples):
            m = json.loads(s["json"])
            m["__key__"] = s["__key__"]
            frames = min(int(m["num_frames"]), self.num_frames)
            words = read_npy(s[IDS], "<i4")
            if words.size < frames // fpc:  # cut from features: a video without a file, rows past its array's end
                frames = m["num_frames"] = words.size * fpc  # the layout counts clips from the json's frames
            k = frames // fpc  # the clips whole within `frames`: the ones the frames path marks valid
            ids[i, :k] = words[:k]
            feats[i, :k] = read_npy(s[FEATS], "<f2").reshape(-1, self.feature_dim)[:k]
            counts.append(frames)
            meta.append(m)
        # numpy, then one from_numpy each: this runs in the trainer's prefetch thread, where every torch op is a GIL
        # hand-off that can wait out the main thread's switch interval.
        num_frames = np.asarray(counts, dtype=np.int64)
        valid = (np.arange(1, n + 1) * fpc)[None] <= num_frames[:, None]
        return TokenBatch(
            ids=to_device(torch.from_numpy(ids), self.device),
            valid=to_device(torch.from_numpy(valid), self.device),
            features=to_device(torch.from_numpy(feats), self.device),
            num_frames=to_device(torch.from_numpy(num_frames), self.device),
            meta=meta,
            span=self.num_frames,
        )


def build_token_loader(tokens: str | Path, split: str, batch_size: int, num_frames: int, **options: Any) -> TokenLoader:
    """A TokenLoader for one rank of `split` in the token dir `tokens`; `options`: rank=, world_size=, seed=,
    shuffle=, shuffle_buffer=, device=."""
    return TokenLoader(tokens, split, batch_size, num_frames, **options)
