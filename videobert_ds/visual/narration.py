"""The narration side of stage 1: a hashed bag-of-words text embedding and the MIL-NCE clip-narration loss.

Why stage 1 reads the narration at all: reconstruction (L_video) spends the clip feature on what most
pixels show (colour, position), so k-means over it groups clips by where things are, not by what they
are or do. VideoBERT's S3D features are semantic because S3D was trained on labelled actions; the labels
an instructional-video corpus has for free are its narration. MIL-NCE (Miech et al., "End-to-End
Learning of Visual Representations from Uncurated Instructional Videos", CVPR 2020) pulls every clip
toward its own segment's narration and away from the other segments' in the batch; in the text -> video
direction all clips of a segment are positives for its narration (multiple-instance learning), because
ASR does not say which clip shows what it names.

The text side only exists to train the clip encoder: it is a mean of hashed word embeddings (the
hashing trick, as fastText), so stage 1 needs no tokenizer and is not exported.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

WORD = re.compile(r"[a-z0-9']+")


def hash_words(texts: Sequence[str], num_buckets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts -> (flat bucket ids, per-text offsets, has_text (B,) bool), EmbeddingBag's input format.

    crc32, not Python's hash(): the same word maps to the same bucket in every process and run.
    A text without words gets one id (bucket 0) so the bag is defined; `has_text` excludes it from the loss."""
    ids: list[int] = []
    offsets: list[int] = []
    has_text: list[bool] = []
    for text in texts:
        offsets.append(len(ids))
        words = WORD.findall(str(text).lower())
        has_text.append(bool(words))
        ids += [zlib.crc32(w.encode()) % num_buckets for w in words] or [0]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long), torch.tensor(has_text)


class NarrationEncoder(nn.Module):
    """Hashed words -> L2-normalised (B, dim) narration embeddings."""

    def __init__(self, num_buckets: int, dim: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.words = nn.EmbeddingBag(num_buckets, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.words(ids, offsets)), dim=-1)


def mil_nce_loss(
    clips: torch.Tensor, owner: torch.Tensor, texts: torch.Tensor, has_text: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric clip-narration contrastive loss over one batch; -> (loss, clip -> narration top-1 accuracy).

    clips (N, D) and texts (B, D) L2-normalised; owner (N,) the sample (text row) each clip belongs to, -1 for a
    clip left out (padding); has_text (B,) which samples have a narration. Clips of samples without one, and those
    texts, are left out. clip -> text: cross-entropy over the texts. text -> clips: MIL-NCE, -log(sum over the
    sample's clips / sum over all clips). With fewer than two narrated samples there is nothing to contrast: the
    loss is 0 with the graph intact (every rank runs the same backward).

    Everything left out is weighted out (its logits pushed to the dtype's lowest finite value, its loss rows
    multiplied by 0) rather than indexed out, so the shapes never depend on the data and nothing here reads a
    device value on the host."""
    low = torch.finfo(torch.float32).min  # finite: a row with nothing kept stays finite in forward and backward
    real = owner >= 0
    own = owner.clamp_min(0)
    keep = real & has_text[own]  # (N,) clips that take part
    logits = clips.float() @ texts.float().T / temperature  # (clips, texts)
    kept_logits = logits.masked_fill(~has_text[None, :], low)
    n_clips = keep.sum().clamp_min(1)
    clip_to_text = (F.cross_entropy(kept_logits, own, reduction="none") * keep).sum() / n_clips
    rows = torch.arange(texts.shape[0], device=own.device)
    positive = (own[None, :] == rows[:, None]) & keep[None, :]  # (texts, clips)
    by_text = logits.T.masked_fill(~keep[None, :], low)
    text_to_clips = torch.logsumexp(by_text, 1) - torch.logsumexp(by_text.masked_fill(~positive, low), 1)
    has_clip = positive.any(1) & has_text  # a narrated sample whose clips were all padding has no positive
    text_to_clips = (text_to_clips * has_clip).sum() / has_clip.sum().clamp_min(1)
    accuracy = ((kept_logits.argmax(1) == own) & keep).float().sum() / n_clips
    enough = (has_text.sum() >= 2).float()  # fewer than two narrations: nothing to contrast
    loss = 0.5 * (clip_to_text + text_to_clips) * enough
    return loss, (accuracy * enough).detach()


def gather_across_ranks(
    clips: torch.Tensor, owner: torch.Tensor, texts: torch.Tensor, has_text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's clips and narrations (owner: row of the rank's own texts, -1 for a clip left out), so each is
    contrasted with the whole global batch (open_clip's gather_with_grad). Shapes must match across ranks (a fixed
    micro-batch does). Every rank then computes the same loss; the all_gather backward sums each rank's share of the
    gradient, and the data-parallel gradient average turns that back into exactly the global-batch gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return clips, owner, texts, has_text
    import torch.distributed.nn.functional as dist_fn

    world, batch = dist.get_world_size(), texts.shape[0]
    all_clips = torch.cat(dist_fn.all_gather(clips))
    all_texts = torch.cat(dist_fn.all_gather(texts))
    owners = [torch.empty_like(owner) for _ in range(world)]
    dist.all_gather(owners, owner)
    flags = [torch.empty_like(has_text) for _ in range(world)]
    dist.all_gather(flags, has_text)
    all_owner = torch.cat([torch.where(o >= 0, o + r * batch, o) for r, o in enumerate(owners)])  # -1 stays -1
    return all_clips, all_owner, all_texts, torch.cat(flags)
