"""Stage 1's objective: the clip autoencoder's reconstruction L_video plus the clip-narration MIL-NCE term.

L = lambda_video * L_video + lambda_narration * L_nce on normalised clips (visual/autoencoder.py holds the model,
visual/narration.py the narration encoder and MIL-NCE); padded clips carry no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from videobert_ds.visual.autoencoder import ClipAutoencoder, reconstruction_loss
from videobert_ds.visual.narration import NarrationEncoder, gather_across_ranks, mil_nce_loss


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


def split_into_clips(
    frames: torch.Tensor, num_frames: torch.Tensor, frames_per_clip: int
) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(
        self, model: ClipAutoencoder, foreground_weight: float = 0.0, objective: EncoderObjectiveConfig | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.foreground_weight = foreground_weight
        self.objective = objective or EncoderObjectiveConfig()
        self.narration = (
            NarrationEncoder(self.objective.narration_buckets, model.config.embedding_dim)
            if self.objective.lambda_narration > 0
            else None
        )

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
            # Padded clips stay in, flagged by owner -1 (every rank gathers the same shapes; the loss weights them
            # out instead of indexing them out, which would make the host wait for the device).
            owner = owner.masked_fill(~valid, -1)
            embeddings, has_text = embeddings.float(), inputs["has_text"]
            if o.gather_negatives:
                embeddings, owner, texts, has_text = gather_across_ranks(embeddings, owner, texts, has_text)
            l_nce, acc = mil_nce_loss(embeddings, owner, texts, has_text, o.temperature)
            loss = loss + o.lambda_narration * l_nce
            out.update(l_nce=l_nce.detach(), acc_narration=acc)
        out["loss"] = loss
        return out
