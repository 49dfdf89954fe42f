"""The visual vocabulary: one safetensors file holding a k-means centroid tree and what it was fit on.

File layout: tensors `level_0` ... `level_{depth-1}` (level l is (branching**(l+1), feature_dim) float32;
the rows of the last level are the visual words, id = path from the root in base `branching`), and
string metadata `format`, `depth`, `branching`, `feature_dim`, `frames_per_clip`, `seed`, and `encoder`
(the ClipEncoder identity dict as JSON). A vocabulary refuses an encoder whose identity differs.

Encoder identities by source: the clip autoencoder (`name` "clip-autoencoder"), S3D (`name` "s3d", plus
`resize` when the frames were resized), or pre-extracted features (`name` "features": `source` dir, `rate`
features/s, `clip_seconds`; `frames_per_clip` is the clip length in the shards' frames, see visual/features.py).
Every identity has `name`, `frames_per_clip` and `feature_dim`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from videobert_ds.core.atomic import save_safetensors
from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.kmeans import KMeansTree, fit_kmeans_tree

FORMAT = "videobert-visual-vocab-v1"
# Word assignment: exact nearest leaf up to this many words, hierarchical descent above (the faster one
# on each side of the crossover measured by `python -m videobert_ds.bench.kmeans`; see tokenizer.py).
AUTO_EXACT_MAX_WORDS = 1024
METHODS = ("auto", "exact", "descent")
FEATURES_ENCODER = "features"  # the identity `name` of a vocabulary built from a pre-extracted features dir


class _NotVocab(Exception):
    pass


class VisualVocabulary:
    """A fitted hierarchical k-means tree plus the identity of the clip encoder it was fit on."""

    def __init__(self, tree: KMeansTree, *, frames_per_clip: int, encoder: dict, seed: int) -> None:
        if int(encoder.get("feature_dim", tree.dim)) != tree.dim:
            raise ValueError(f"encoder feature_dim {encoder['feature_dim']} != centroid dim {tree.dim}")
        self.tree = tree
        self.frames_per_clip = int(frames_per_clip)
        self.encoder = dict(encoder)
        self.seed = int(seed)

    # The tree's shape, for callers that hold only the vocabulary.
    depth = property(lambda self: self.tree.depth)
    branching = property(lambda self: self.tree.branching)
    feature_dim = property(lambda self: self.tree.dim)

    @property
    def size(self) -> int:
        """Number of visual words (branching ** depth)."""
        return self.tree.num_leaves

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        encoder: ClipEncoder | dict,
        *,
        depth: int,
        branching: int,
        seed: int = 0,
        **kmeans_kwargs,
    ) -> VisualVocabulary:
        """Fit on this rank's clip features (N, D) from `encoder` (a ClipEncoder, or the identity dict of a
        source that is not one, e.g. a features dir); distributed when torch.distributed is up."""
        ident = dict(encoder) if isinstance(encoder, dict) else encoder.identity()
        if features.ndim != 2 or features.shape[1] != ident["feature_dim"]:
            raise ValueError(
                f"features must be (N, {ident['feature_dim']}) from {ident['name']}, got {tuple(features.shape)}"
            )
        tree = fit_kmeans_tree(features, depth, branching, seed=seed, **kmeans_kwargs)
        return cls(tree, frames_per_clip=ident["frames_per_clip"], encoder=ident, seed=seed)

    def resolve_method(self, method: str = "auto") -> str:
        """ "exact" or "descent": what `method` means for this vocabulary ("auto" depends only on its size)."""
        if method not in METHODS:
            raise ValueError(f"assignment method must be one of {METHODS}, got {method!r}")
        if method != "auto":
            return method
        return "exact" if self.size <= AUTO_EXACT_MAX_WORDS else "descent"

    def assign(self, features: torch.Tensor, method: str = "auto") -> torch.Tensor:
        """Word id (int64) of each row of features (N, D), as the VisualTokenizer assigns them."""
        tree = self.tree if self.tree.leaves.device == features.device else self.tree.to(features.device)
        if self.resolve_method(method) == "exact":
            return tree.assign_exact(features)
        return tree.assign_descent(features)

    def check_encoder(self, encoder: ClipEncoder | dict) -> None:
        """Raise a one-line ValueError naming every identity field where `encoder` (or an identity) differs."""
        got = dict(encoder) if isinstance(encoder, dict) else encoder.identity()
        diffs = [
            f"{k} {self.encoder.get(k)!r} != {got.get(k)!r}"
            for k in sorted(set(self.encoder) | set(got))
            if self.encoder.get(k) != got.get(k)
        ]
        if diffs:
            raise ValueError("visual vocabulary was fit on a different clip encoder: " + "; ".join(diffs))

    def to(self, device: torch.device | str) -> VisualVocabulary:
        return VisualVocabulary(
            self.tree.to(device), frames_per_clip=self.frames_per_clip, encoder=self.encoder, seed=self.seed
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the one-file vocabulary (to a temporary name in the same folder, then renamed)."""
        path = Path(path)
        tensors = {f"level_{i}": c.detach().float().cpu().contiguous() for i, c in enumerate(self.tree.levels)}
        meta = {
            "format": FORMAT,
            "depth": str(self.depth),
            "branching": str(self.branching),
            "feature_dim": str(self.feature_dim),
            "frames_per_clip": str(self.frames_per_clip),
            "seed": str(self.seed),
            "encoder": json.dumps(self.encoder, sort_keys=True),
        }
        return save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> VisualVocabulary:
        """Read a vocabulary file; a missing, foreign or inconsistent file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"visual vocabulary file not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise _NotVocab(meta.get("format"))
                depth, branching = int(meta["depth"]), int(meta["branching"])
                levels = [f.get_tensor(f"level_{i}") for i in range(depth)]
                encoder = json.loads(meta["encoder"])
                frames_per_clip, seed, dim = int(meta["frames_per_clip"]), int(meta["seed"]), int(meta["feature_dim"])
        except _NotVocab as e:
            raise ValueError(f"{path} is not a visual vocabulary (format {e.args[0]!r}, want {FORMAT!r})") from None
        except Exception as e:  # safetensors header errors, missing keys or metadata, bad JSON
            raise ValueError(f"cannot read visual vocabulary {path}: {type(e).__name__}: {e}") from None
        tree = KMeansTree(branching, [c.to(device) for c in levels])
        if tree.dim != dim:
            raise ValueError(f"{path}: centroid dim {tree.dim} != recorded feature_dim {dim}")
        return cls(tree, frames_per_clip=frames_per_clip, encoder=encoder, seed=seed)


def vocab_metadata(path: str | os.PathLike) -> dict:
    """A vocabulary file's header (size, feature_dim, frames_per_clip, encoder) without loading its centroids;
    a missing or foreign file is a one-line ConfigError."""
    from videobert_ds.core.config import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"visual.vocab: vocabulary file not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    if "branching" not in meta:
        raise ConfigError(f"visual.vocab: {path} is not a visual vocabulary file")
    return {
        "size": int(meta["branching"]) ** int(meta["depth"]),
        "feature_dim": int(meta["feature_dim"]),
        "frames_per_clip": int(meta["frames_per_clip"]),
        "encoder": json.loads(meta["encoder"]),
    }


def feature_stats(vocab: VisualVocabulary, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and spread of the clip features, estimated from the leaf centroids: the scale the
    masked clip-feature regression standardises its targets by (teacher and student alike). The spread is floored
    at 1% of the mean spread: a dimension in which every centroid agrees (e.g. an S3D channel that is zero for
    all of them, as after a ReLU) can still vary between clips, and dividing by ~0 made its targets ~1e10."""
    leaves = vocab.tree.leaves.float().to(device)
    std = leaves.std(0) if leaves.shape[0] > 1 else torch.ones_like(leaves[0])
    return leaves.mean(0), std.clamp_min(max(1e-6, 0.01 * float(std.mean())))
