"""Synthetic embeddings with a known structure, for the clustering and contrastive-loss tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blobs(seed: int = 0, per_blob: int = 40, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """16 tight blobs in 4 well-separated groups of 4 (so a 4x4 tree can recover them); rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randn(4, dim, generator=g) * 30
    centers = (groups[:, None] + torch.randn(4, 4, dim, generator=g) * 5).reshape(16, dim)
    labels = torch.arange(16).repeat_interleave(per_blob)
    x = centers[labels] + torch.randn(len(labels), dim, generator=g) * 0.5
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def purity(pred: torch.Tensor, labels: torch.Tensor) -> float:
    hits = sum(int(torch.bincount(labels[pred == c]).max()) for c in pred.unique())
    return hits / len(labels)


def aligned(n_texts: int, clips_per_text: int, dim: int = 16, seed: int = 0):
    """Unit text vectors and, per text, `clips_per_text` unit clip vectors close to it: (clips, owner, texts)."""
    g = torch.Generator().manual_seed(seed)
    texts = F.normalize(torch.randn(n_texts, dim, generator=g), dim=-1)
    owner = torch.arange(n_texts).repeat_interleave(clips_per_text)
    clips = F.normalize(texts[owner] + 0.05 * torch.randn(len(owner), dim, generator=g), dim=-1)
    return clips, owner, texts
