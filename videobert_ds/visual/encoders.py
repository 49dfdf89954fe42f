"""The clip-encoder interface: uint8 frames (B, T, H, W, C) -> clip features (B, T // frames_per_clip, D).

Every feature extractor the visual vocabulary can be built on (the stage-1 autoencoder, S3D) implements
this, so `build_vocab` and the `VisualTokenizer` never care which one they hold.
"""

from __future__ import annotations

import abc
import hashlib

import torch
from torch import nn


class ClipEncoder(nn.Module, abc.ABC):
    """Frozen feature extractor over fixed-length clips.

    Subclasses set `frames_per_clip` and `feature_dim` and implement `encode_clips` on
    float input already split into clips.
    """

    name: str = "clip-encoder"
    frames_per_clip: int
    feature_dim: int

    @abc.abstractmethod
    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips (N, frames_per_clip, H, W, C) -> features (N, feature_dim)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, T, H, W, C) -> (B, T // frames_per_clip, D); trailing frames are dropped."""
        b, t = frames.shape[:2]
        n = t // self.frames_per_clip
        if n == 0:
            raise ValueError(f"{t} frames is fewer than one clip of {self.frames_per_clip}")
        clips = frames[:, : n * self.frames_per_clip].reshape(b * n, self.frames_per_clip, *frames.shape[2:])
        return self.encode_clips(clips).reshape(b, n, -1)

    def identity(self) -> dict:
        """What a vocabulary records about the encoder it was fit on; a mismatch at load is an error."""
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().numpy().tobytes())
        return {
            "name": self.name,
            "frames_per_clip": int(self.frames_per_clip),
            "feature_dim": int(self.feature_dim),
            "weights_sha256": digest.hexdigest()[:16],
        }
