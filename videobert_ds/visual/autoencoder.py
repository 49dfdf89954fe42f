"""Stage-1 clip autoencoder: the source design's autoencoding video encoder, trained on L_video.

A 3D-convolutional encoder squeezes a clip of `frames_per_clip` frames into one `feature_dim` vector;
a mirrored transposed-conv decoder rebuilds the normalised clip from that vector alone, so the vector
must carry colour, shape, motion and position. With `embedding_dim` > 0 a second head reads the last
conv layer pooled over time and space (mean and max per channel: one detector shared by every position,
so it learns what a thing is from few examples and ignores where it is) into an L2-normalised embedding
trained against the narration (video/narration.py). Then the embedding, not the bottleneck, is the clip
feature k-means clusters into visual words: it keeps what the narration names and drops where on screen
it happens.
It is a Hugging Face `PreTrainedModel`, so ZeRO-3 partitions it at construction and
`save_pretrained` / `from_pretrained` give the exported model dir.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as hf_init

from videobert_ds.visual.encoders import ClipEncoder


class ClipAutoencoderConfig(PretrainedConfig):
    model_type = "videobert_clip_autoencoder"

    def __init__(
        self,
        frames_per_clip: int = 4,
        image_size: int = 32,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 64,
        embedding_dim: int = 0,
        pixel_kernel: int = 3,
        **kwargs,
    ) -> None:
        self.frames_per_clip = frames_per_clip
        self.image_size = image_size
        self.channels = list(channels)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim  # 0: no narration head; older exported dirs load that way
        # The last conv to RGB; 1 (pointwise) halves a CPU training step: torch's CPU conv3d backward at full
        # resolution with 3 output channels is most of the step at kernel 3 (the transposed conv before it
        # already mixes 4x4x4 neighbourhoods).
        self.pixel_kernel = pixel_kernel
        super().__init__(**kwargs)

    @property
    def clip_feature_dim(self) -> int:
        """Width of the clip feature visual words are built on: the embedding when there is one."""
        return self.embedding_dim or self.feature_dim

    def grid(self) -> tuple[list[tuple[int, int]], tuple[int, int, int]]:
        """Per-layer (temporal, spatial) strides and the (T, H, W) grid after the last layer."""
        t, s = self.frames_per_clip, self.image_size
        strides = []
        for _ in self.channels:
            st = 2 if t >= 2 else 1
            if s % 2:
                raise ValueError(f"image_size {self.image_size} must halve cleanly through {len(self.channels)} layers")
            strides.append((st, 2))
            t, s = t // st, s // 2
        return strides, (t, s, s)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, C) -> float (N, C, T, H, W) in [-1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def denormalize_frames(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, T, H, W) in [-1, 1] -> uint8 (N, T, H, W, C)."""
    return x.add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def _fan_in(module: nn.Module) -> float:
    """Inputs feeding one output unit, from the module's shape attributes (its weight may be partitioned)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    taps = module.in_channels * math.prod(module.kernel_size)
    if isinstance(module, nn.ConvTranspose3d):  # each output sees kernel/stride taps per input channel
        taps /= math.prod(module.stride)
    return taps


def _block(conv: nn.Module, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.GroupNorm(min(8, out_channels), out_channels), nn.GELU())


class ClipAutoencoder(PreTrainedModel):
    config_class = ClipAutoencoderConfig
    base_model_prefix = "autoencoder"
    main_input_name = "clips"

    def __init__(self, config: ClipAutoencoderConfig) -> None:
        super().__init__(config)
        strides, (gt, gh, gw) = config.grid()
        self.grid_shape = (config.channels[-1], gt, gh, gw)
        enc, c_in = [], 3
        for c_out, (st, ss) in zip(config.channels, strides):
            enc.append(_block(nn.Conv3d(c_in, c_out, (3, 4, 4), (st, ss, ss), (1, 1, 1)), c_out))
            c_in = c_out
        self.encoder = nn.Sequential(*enc)
        flat = config.channels[-1] * gt * gh * gw
        self.to_feature = nn.Linear(flat, config.feature_dim)
        self.from_feature = nn.Linear(config.feature_dim, flat)
        dec = []
        rev = list(reversed(config.channels))
        for i, (st, ss) in enumerate(reversed(strides)):
            c_out = rev[i + 1] if i + 1 < len(rev) else rev[-1]
            kt = 4 if st == 2 else 3
            dec.append(_block(nn.ConvTranspose3d(rev[i], c_out, (kt, 4, 4), (st, ss, ss), (1, 1, 1)), c_out))
        self.decoder = nn.Sequential(*dec)
        self.to_pixels = nn.Conv3d(rev[-1], 3, kernel_size=config.pixel_kernel, padding=config.pixel_kernel // 2)
        pooled = 2 * config.channels[-1]  # mean and max of each channel of the last conv layer
        self.to_embedding = (
            nn.Sequential(
                nn.Linear(pooled, 2 * config.embedding_dim),
                nn.GELU(),
                nn.Linear(2 * config.embedding_dim, config.embedding_dim),
            )
            if config.embedding_dim
            else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # He-style fan-in init for every conv, ConvTranspose3d included (transformers' default skips it,
        # and under ZeRO-3 an uninitialised partitioned weight is garbage, not torch's default init).
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            hf_init.normal_(module.weight, mean=0.0, std=(2.0 / _fan_in(module)) ** 0.5)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised clips (N, C, T, H, W) -> features (N, feature_dim)."""
        return self.to_feature(self.encoder(clips).flatten(1))

    def embed(self, grid: torch.Tensor) -> torch.Tensor:
        """The last conv layer's output (N, C, t, h, w) -> L2-normalised narration-space embeddings
        (N, embedding_dim)."""
        if self.to_embedding is None:
            raise ValueError("this clip autoencoder has no embedding head (embedding_dim = 0)")
        pooled = torch.cat([grid.mean((2, 3, 4)), grid.amax((2, 3, 4))], dim=1)
        return F.normalize(self.to_embedding(pooled), dim=-1)

    def clip_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised clips -> the features visual words are built on (the embedding when there is one)."""
        grid = self.encoder(clips)
        return self.embed(grid) if self.to_embedding is not None else self.to_feature(grid.flatten(1))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        x = self.from_feature(features).view(-1, *self.grid_shape)
        return torch.tanh(self.to_pixels(self.decoder(x)))

    def forward(
        self, clips: torch.Tensor, decode_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised clips -> (reconstruction, bottleneck features, embeddings or None without the head).
        `decode_index`: rebuild only these clips (the reconstruction then has len(decode_index) rows)."""
        grid = self.encoder(clips)
        features = self.to_feature(grid.flatten(1))
        embeddings = self.embed(grid) if self.to_embedding is not None else None
        return self.decode(features if decode_index is None else features[decode_index]), features, embeddings


def reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, foreground_weight: float = 0.0
) -> torch.Tensor:
    """L_video: mean squared error over the clips that hold only real (unpadded) frames.

    With `foreground_weight` > 0 each pixel's error is weighted by 1 + w * (its distance from the frame's
    median colour): in a clip, most pixels are background whose noise cannot be predicted anyway, and plain
    MSE lets the bottleneck spend itself on the background instead of the objects and their motion.
    """
    err = F.mse_loss(recon, target, reduction="none")
    if foreground_weight > 0:
        background = target.flatten(3).median(dim=-1).values[..., None, None]  # (N, C, T, 1, 1)
        salience = (target - background).abs().mean(dim=1, keepdim=True)  # (N, 1, T, H, W), in [0, 2]
        err = err * (1.0 + foreground_weight * salience)
    per_clip = err.flatten(1).mean(1)
    weight = valid.to(per_clip.dtype)
    return (per_clip * weight).sum() / weight.sum().clamp_min(1.0)


class AutoencoderClipEncoder(ClipEncoder):
    """The trained autoencoder's encoder half behind the ClipEncoder interface (frozen)."""

    name = "clip-autoencoder"

    def __init__(self, model: ClipAutoencoder) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.frames_per_clip = model.config.frames_per_clip
        self.feature_dim = model.config.clip_feature_dim

    @torch.no_grad()
    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.clip_features(normalize_frames(clips))

    @classmethod
    def from_pretrained(cls, model_dir: str) -> AutoencoderClipEncoder:
        return cls(ClipAutoencoder.from_pretrained(model_dir))
