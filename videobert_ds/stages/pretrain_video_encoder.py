"""Stage 1, `pretrain_video_encoder`: the clip autoencoder trained on the reconstruction loss L_video and,
where the samples are narrated, the clip-narration MIL-NCE loss (video/narration.py):

    L = lambda_video * L_video + lambda_narration * L_nce

Training clips are shifted by a random offset of up to `shift_augment` pixels (the same offset for every
frame of a clip, so motion is kept): what a clip shows must not depend on where on screen it is."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.objectives.autoencoder import AutoencoderObjective, EncoderObjectiveConfig, split_into_clips
from videobert_ds.objectives.layout import host_to_device
from videobert_ds.stages import cast_unpartitioned
from videobert_ds.training.stage import Stage
from videobert_ds.visual.autoencoder import ClipAutoencoder, ClipAutoencoderConfig, denormalize_frames, normalize_frames
from videobert_ds.visual.narration import hash_words


@dataclass
class AutoencoderModelConfig:
    frames_per_clip: int = 4
    image_size: int = 32
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    feature_dim: int = 64
    foreground_weight: float = 0.0  # >0: weight pixel errors by distance from the frame's median colour
    embedding_dim: int = 0  # >0: the narration-space clip embedding (needed when objective.lambda_narration > 0)
    pixel_kernel: int = 3  # kernel of the last conv to RGB (odd); 1 is much faster on CPU

    def hf_config(self) -> ClipAutoencoderConfig:
        return ClipAutoencoderConfig(
            frames_per_clip=self.frames_per_clip,
            image_size=self.image_size,
            channels=self.channels,
            feature_dim=self.feature_dim,
            embedding_dim=self.embedding_dim,
            pixel_kernel=self.pixel_kernel,
        )


@dataclass
class VideoEncoderStageConfig(StageConfig):
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    objective: EncoderObjectiveConfig = field(default_factory=EncoderObjectiveConfig)


class VideoEncoderStage(Stage):
    name = "pretrain_video_encoder"
    config_cls = VideoEncoderStageConfig
    cfg: VideoEncoderStageConfig

    def check(self) -> None:
        m, d = self.cfg.model, self.cfg.data
        if d.num_frames < m.frames_per_clip:
            raise ConfigError(
                f"data.num_frames ({d.num_frames}) is shorter than one clip (model.frames_per_clip {m.frames_per_clip})"
            )
        from videobert_ds.data.loader import read_shard_manifest  # a folder or a URL, pattern, pipe: (sources.py)

        manifest = read_shard_manifest(d.shards)
        size = manifest.get("size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        if size is not None and int(size) != m.image_size:
            raise ConfigError(f"model.image_size ({m.image_size}) does not match the shards' frame size ({size})")
        try:
            m.hf_config().grid()
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        if m.pixel_kernel < 1 or m.pixel_kernel % 2 == 0:
            raise ConfigError(f"model.pixel_kernel must be a positive odd number, got {m.pixel_kernel}")
        o = self.cfg.objective
        if o.lambda_narration > 0 and m.embedding_dim <= 0:
            raise ConfigError(
                "objective.lambda_narration > 0 needs model.embedding_dim > 0 (the narration-space embedding)"
            )
        if o.lambda_video < 0 or o.lambda_narration < 0 or o.lambda_video + o.lambda_narration <= 0:
            raise ConfigError("objective: lambda_video and lambda_narration must be >= 0, and not both 0")
        if o.temperature <= 0 or o.narration_buckets < 1:
            raise ConfigError("objective: temperature must be > 0 and narration_buckets >= 1")
        if o.reconstruct_every < 1:
            raise ConfigError(f"objective.reconstruct_every must be >= 1, got {o.reconstruct_every}")
        if not 0 <= o.shift_augment < m.image_size // 2:
            raise ConfigError(f"objective.shift_augment must be in [0, {m.image_size // 2}), got {o.shift_augment}")

    def build_module(self) -> nn.Module:
        # _from_config partitions at construction under ZeRO-3 (see training/trainer.build_module); the
        # narration encoder is built outside it and must match the model's precision (bf16 runs).
        model = ClipAutoencoder._from_config(self.cfg.model.hf_config())
        objective = AutoencoderObjective(model, self.cfg.model.foreground_weight, self.cfg.objective)
        return cast_unpartitioned(objective, model.dtype)

    def prepare_host(self, batch: Any, generator: torch.Generator) -> Any:
        """The narrations' hashed words (host only; nothing random)."""
        if self.cfg.objective.lambda_narration <= 0:
            return None
        return hash_words([m.get("text", "") for m in batch.meta], self.cfg.objective.narration_buckets)

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        clips, valid = split_into_clips(batch.frames.to(device), batch.num_frames, self.cfg.model.frames_per_clip)
        inputs = {"clips": normalize_frames(clips), "valid": valid}
        if self.cfg.objective.lambda_narration > 0:
            words = getattr(batch, "host", None) or self.prepare_host(batch, None)
            ids, offsets, has_text = (host_to_device(t, device) for t in words)
            inputs.update(text_ids=ids, text_offsets=offsets, has_text=has_text)
        return inputs

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
        """Clips as the decoder saw them (shifted, top) over their reconstructions (bottom), frames left to right."""
        n = min(4, outputs["recon"].shape[0])
        real = denormalize_frames(outputs["recon_targets"][:n].float().cpu())
        fake = denormalize_frames(outputs["recon"][:n].float().cpu())
        rows = [torch.cat(list(clip), dim=1) for clip in torch.cat([real, fake])]
        return {"reconstruction": torch.cat(rows, dim=0).numpy()}

    def export(self, module: nn.Module, out_dir: Path) -> None:
        module.model.save_pretrained(out_dir, safe_serialization=True)
