"""Stage 1, `pretrain_video_encoder`: the clip autoencoder trained on the reconstruction loss L_video and,
where the samples are narrated, the clip-narration MIL-NCE loss (video/narration.py):

    L = lambda_video * L_video + lambda_narration * L_nce

Training clips are shifted by a random offset of up to `shift_augment` pixels (the same offset for every
frame of a clip, so motion is kept): what a clip shows must not depend on where on screen it is."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videobert_ds.core.config import ConfigError, StageConfig
from videobert_ds.training.stage import Stage
from videobert_ds.visual.autoencoder import (
    ClipAutoencoder,
    ClipAutoencoderConfig,
    denormalize_frames,
    normalize_frames,
    reconstruction_loss,
)
from videobert_ds.visual.narration import NarrationEncoder, gather_across_ranks, hash_words, mil_nce_loss


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
class EncoderObjectiveConfig:
    lambda_video: float = 1.0  # reconstruction, L_video
    lambda_narration: float = 0.0  # clip-narration MIL-NCE; needs model.embedding_dim > 0 and narrated samples
    temperature: float = 0.1
    narration_buckets: int = 4096  # hashed-word embedding rows of the (training-only) narration encoder
    shift_augment: int = 0  # max random translation of a training clip, in pixels (0 = none)
    # Training rebuilds every k-th clip (a random phase each step) instead of all: the decoder is most of a
    # CPU step, and L_video is a mean, so a subset estimates it. Validation rebuilds every clip.
    reconstruct_every: int = 1
    gather_negatives: bool = True  # contrast with every rank's narrations, not only this rank's micro-batch


@dataclass
class VideoEncoderStageConfig(StageConfig):
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    objective: EncoderObjectiveConfig = field(default_factory=EncoderObjectiveConfig)


def split_into_clips(frames: torch.Tensor, num_frames: torch.Tensor, frames_per_clip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, T, H, W, C) -> clips (B*n, fpc, H, W, C) and a mask of clips made only of real frames."""
    b, t = frames.shape[:2]
    n = t // frames_per_clip
    clips = frames[:, : n * frames_per_clip].reshape(b * n, frames_per_clip, *frames.shape[2:])
    clip_end = (torch.arange(n, device=frames.device) + 1) * frames_per_clip
    valid = (clip_end[None, :] <= num_frames.to(frames.device)[:, None]).reshape(-1)
    return clips, valid


def random_shift(clips: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each clip (N, C, T, H, W) by its own random (dy, dx) in [-max_shift, max_shift], the same for
    all its frames; uncovered pixels take the clip's median colour (its background)."""
    n, c, t, h, w = clips.shape
    s = max_shift
    background = clips.flatten(2).median(-1).values[:, :, None, None, None]
    padded = F.pad(clips - background, (s, s, s, s)) + background
    dy = torch.randint(0, 2 * s + 1, (n,), device=clips.device)
    dx = torch.randint(0, 2 * s + 1, (n,), device=clips.device)
    rows = (dy[:, None] + torch.arange(h, device=clips.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=clips.device))[:, None, :]  # (N, 1, W)
    picked = padded[torch.arange(n, device=clips.device)[:, None, None], :, :, rows, cols]  # (N, H, W, C, T)
    return picked.permute(0, 3, 4, 1, 2).contiguous()


class AutoencoderObjective(nn.Module):
    """lambda_video * L_video + lambda_narration * L_nce on normalised clips; padded clips carry no loss."""

    def __init__(self, model: ClipAutoencoder, foreground_weight: float = 0.0,
                 objective: EncoderObjectiveConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.foreground_weight = foreground_weight
        self.objective = objective or EncoderObjectiveConfig()
        self.narration = (NarrationEncoder(self.objective.narration_buckets, model.config.embedding_dim)
                          if self.objective.lambda_narration > 0 else None)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.objective
        clips = inputs["clips"]
        if self.training and o.shift_augment > 0:
            clips = random_shift(clips, o.shift_augment)
        valid, index = inputs["valid"], None
        if self.training and o.reconstruct_every > 1:
            phase = int(torch.randint(o.reconstruct_every, ()))
            index = torch.arange(phase, clips.shape[0], o.reconstruct_every, device=clips.device)
        recon, _, embeddings = self.model(clips.to(self.model.dtype), decode_index=index)
        targets, target_valid = (clips, valid) if index is None else (clips[index], valid[index])
        l_video = reconstruction_loss(recon.float(), targets, target_valid, self.foreground_weight)
        out = {"l_video": l_video.detach(), "recon": recon.detach(), "recon_targets": targets.detach()}
        loss = o.lambda_video * l_video
        if self.narration is not None:
            texts = self.narration(inputs["text_ids"], inputs["text_offsets"]).float()
            clips_per_sample = embeddings.shape[0] // texts.shape[0]
            owner = torch.arange(texts.shape[0], device=embeddings.device).repeat_interleave(clips_per_sample)
            # Padded clips stay in (flagged by owner -1 -> dropped below) so every rank gathers the same shapes.
            owner = owner.masked_fill(~valid, -1)
            embeddings, has_text = embeddings.float(), inputs["has_text"]
            if o.gather_negatives:
                embeddings, owner, texts, has_text = gather_across_ranks(embeddings, owner, texts, has_text)
            real = owner >= 0
            l_nce, acc = mil_nce_loss(embeddings[real], owner[real], texts, has_text, o.temperature)
            loss = loss + o.lambda_narration * l_nce
            out.update(l_nce=l_nce.detach(), acc_narration=acc)
        out["loss"] = loss
        return out


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
        if m.pixel_kernel < 1 or m.pixel_kernel % 2 == 0:
            raise ConfigError(f"model.pixel_kernel must be a positive odd number, got {m.pixel_kernel}")
        o = self.cfg.objective
        if o.lambda_narration > 0 and m.embedding_dim <= 0:
            raise ConfigError("objective.lambda_narration > 0 needs model.embedding_dim > 0 (the narration-space embedding)")
        if o.lambda_video < 0 or o.lambda_narration < 0 or o.lambda_video + o.lambda_narration <= 0:
            raise ConfigError("objective: lambda_video and lambda_narration must be >= 0, and not both 0")
        if o.temperature <= 0 or o.narration_buckets < 1:
            raise ConfigError("objective: temperature must be > 0 and narration_buckets >= 1")
        if o.reconstruct_every < 1:
            raise ConfigError(f"objective.reconstruct_every must be >= 1, got {o.reconstruct_every}")
        if not 0 <= o.shift_augment < m.image_size // 2:
            raise ConfigError(f"objective.shift_augment must be in [0, {m.image_size // 2}), got {o.shift_augment}")

    def build_module(self) -> nn.Module:
        # _from_config partitions at construction under ZeRO-3 (see engine.build_module).
        return AutoencoderObjective(ClipAutoencoder._from_config(self.cfg.model.hf_config()),
                                    self.cfg.model.foreground_weight, self.cfg.objective)

    def make_inputs(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        clips, valid = split_into_clips(batch.frames.to(device), batch.num_frames, self.cfg.model.frames_per_clip)
        inputs = {"clips": normalize_frames(clips), "valid": valid}
        if self.cfg.objective.lambda_narration > 0:
            ids, offsets, has_text = hash_words([m.get("text", "") for m in batch.meta], self.cfg.objective.narration_buckets)
            inputs.update(text_ids=ids.to(device), text_offsets=offsets.to(device), has_text=has_text.to(device))
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
