"""Stage-1 clip autoencoder: the source design's autoencoding video encoder, trained on L_video.

A 3D-convolutional encoder squeezes a clip of `frames_per_clip` frames into one `feature_dim` vector
(the clip feature k-means clusters into visual words); a mirrored transposed-conv decoder rebuilds
the normalised clip from that vector alone, so the vector must carry colour, shape and motion.
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

from videobert_ds.video.encoders import ClipEncoder


class ClipAutoencoderConfig(PretrainedConfig):
    model_type = "videobert_clip_autoencoder"

    def __init__(
        self,
        frames_per_clip: int = 4,
        image_size: int = 32,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 64,
        **kwargs,
    ) -> None:
        self.frames_per_clip = frames_per_clip
        self.image_size = image_size
        self.channels = list(channels)
        self.feature_dim = feature_dim
        super().__init__(**kwargs)

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
        self.to_pixels = nn.Conv3d(rev[-1], 3, kernel_size=3, padding=1)
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

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        x = self.from_feature(features).view(-1, *self.grid_shape)
        return torch.tanh(self.to_pixels(self.decoder(x)))

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised clips -> (reconstruction, features)."""
        features = self.encode(clips)
        return self.decode(features), features


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
        self.feature_dim = model.config.feature_dim

    @torch.no_grad()
    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.encode(normalize_frames(clips))

    @classmethod
    def from_pretrained(cls, model_dir: str) -> "AutoencoderClipEncoder":
        return cls(ClipAutoencoder.from_pretrained(model_dir))
