"""Stage 1, `pretrain_video_encoder`: the clip autoencoder trained on the reconstruction loss L_video."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videobert_ds.config import ConfigError, StageConfig
from videobert_ds.stages.base import Stage
from videobert_ds.video.autoencoder import (
    ClipAutoencoder,
    ClipAutoencoderConfig,
    denormalize_frames,
    normalize_frames,
    reconstruction_loss,
)


@dataclass
class AutoencoderModelConfig:
    frames_per_clip: int = 4
    image_size: int = 32
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 64
    foreground_weight: float = 0.0  # >0: weight pixel errors by distance from the frame's median colour

    def hf_config(self) -> ClipAutoencoderConfig:
        return ClipAutoencoderConfig(
            frames_per_clip=self.frames_per_clip,
            image_size=self.image_size,
            channels=self.channels,
            feature_dim=self.feature_dim,
        )


@dataclass
class VideoEncoderStageConfig(StageConfig):
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)


def split_into_clips(frames: torch.Tensor, num_frames: torch.Tensor, frames_per_clip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, T, H, W, C) -> clips (B*n, fpc, H, W, C) and a mask of clips made only of real frames."""
    b, t = frames.shape[:2]
    n = t // frames_per_clip
    clips = frames[:, : n * frames_per_clip].reshape(b * n, frames_per_clip, *frames.shape[2:])
    clip_end = (torch.arange(n, device=frames.device) + 1) * frames_per_clip
    valid = (clip_end[None, :] <= num_frames.to(frames.device)[:, None]).reshape(-1)
    return clips, valid


class AutoencoderObjective(nn.Module):
    """L_video on normalised clips; padded clips carry no loss."""

    def __init__(self, model: ClipAutoencoder, foreground_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.foreground_weight = foreground_weight

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clips = inputs["clips"]
        recon, _ = self.model(clips.to(self.model.dtype))
        loss = reconstruction_loss(recon.float(), clips, inputs["valid"], self.foreground_weight)
        return {"loss": loss, "l_video": loss.detach(), "recon": recon.detach()}


class VideoEncoderStage(Stage):
    name = "pretrain_video_encoder"
    config_cls = VideoEncoderStageConfig
    cfg: VideoEncoderStageConfig

    def check(self) -> None:
        m, d = self.cfg.model, self.cfg.data
        if d.num_frames < m.frames_per_clip:
            raise ConfigError(f"data.num_frames ({d.num_frames}) is shorter than one clip (model.frames_per_clip {m.frames_per_clip})")
        manifest = json.loads((Path(d.shards) / "manifest.json").read_text())
        size = manifest.get("size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        if size is not None and int(size) != m.image_size:
            raise ConfigError(f"model.image_size ({m.image_size}) does not match the shards' frame size ({size})")
        try:
            m.hf_config().grid()
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None

    def build_module(self) -> nn.Module:
        # _from_config partitions at construction under ZeRO-3 (see engine.build_module).
        return AutoencoderObjective(ClipAutoencoder._from_config(self.cfg.model.hf_config()), self.cfg.model.foreground_weight)

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        clips, valid = split_into_clips(batch.frames.to(device), batch.num_frames, self.cfg.model.frames_per_clip)
        return {"clips": normalize_frames(clips), "valid": valid}

    def step_stats(self, inputs: dict[str, Any]) -> tuple[int, float]:
        return 0, self.flops_per_clip() * inputs["clips"].shape[0]

    @functools.cache
    def flops_per_clip(self) -> float:
        """Measured, not estimated: one clip's forward counted by torch's FlopCounterMode on the meta
        device; training = 3x forward (backward costs about twice the forward)."""
        m = self.cfg.model
        with torch.device("meta"):
            probe = ClipAutoencoder(m.hf_config())
            clip = torch.empty(1, 3, m.frames_per_clip, m.image_size, m.image_size)
        with FlopCounterMode(display=False) as counter:
            probe(clip)
        return 3.0 * counter.get_total_flops()

    def images(self, module: nn.Module, inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Input clips (top) over their reconstructions (bottom), frames left to right."""
        n = min(4, inputs["clips"].shape[0])
        real = denormalize_frames(inputs["clips"][:n].float().cpu())
        fake = denormalize_frames(outputs["recon"][:n].float().cpu())
        rows = [torch.cat(list(clip), dim=1) for clip in torch.cat([real, fake])]
        return {"reconstruction": torch.cat(rows, dim=0).numpy()}

    def export(self, module: nn.Module, out_dir: Path) -> None:
        module.model.save_pretrained(out_dir, safe_serialization=True)
