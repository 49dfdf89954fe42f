"""Frames -> visual-word ids on the model's device: a frozen ClipEncoder followed by the vocabulary's tree.

Assignment method ("auto" by default), from `python -m videobert_ds.bench.kmeans` (docs/benchmarks.md,
"Visual vocabulary"): the exact nearest leaf is one GEMM against every leaf and wins for small
vocabularies (4^2 words of 64-d: ~5-20x faster than descent; 16^2 of 1024-d: ~1-2x), while the
hierarchical descent does `depth * branching` dot products per clip instead of `branching**depth`
and wins for larger ones (12^3 of 1024-d: ~2-4x; the paper's 12^4 = 20,736 words of 1024-d: ~10-20x).
So "auto" uses exact for vocabularies of up to AUTO_EXACT_MAX_WORDS words and descent above. The two
can give different ids for the same clip (descent follows the partition the tree was fit with); the
choice depends only on the vocabulary, never on the device, so training and inference always agree.
"""

from __future__ import annotations

import torch
from torch import nn

from videobert_ds.visual.encoders import ClipEncoder
from videobert_ds.visual.kmeans import KMeansTree
from videobert_ds.visual.vocab import AUTO_EXACT_MAX_WORDS, VisualVocabulary  # noqa: F401 (re-exported)


class VisualTokenizer(nn.Module):
    """uint8 frames (B, T, H, W, C) -> (visual-word ids (B, n_clips) int64, valid mask (B, n_clips) bool).

    Frozen: the encoder is kept in eval mode with gradients off, and calls run under torch.no_grad.
    The centroids are buffers, so `.to(device)` moves them with the encoder; input frames are moved to
    that device. A clip is valid when all its frames are real (index < num_frames); invalid clips get
    id 0, so padding never changes a result.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        vocab: VisualVocabulary,
        *,
        method: str = "auto",
        clips_per_batch: int = 256,
    ) -> None:
        super().__init__()
        if clips_per_batch < 1:
            raise ValueError(f"clips_per_batch must be >= 1, got {clips_per_batch}")
        vocab.check_encoder(encoder)
        self.encoder = encoder.eval().requires_grad_(False)
        self.frames_per_clip = int(encoder.frames_per_clip)
        self.branching = vocab.branching
        self.vocab_size = vocab.size
        self.method = vocab.resolve_method(method)
        self.clips_per_batch = clips_per_batch
        for i, cents in enumerate(vocab.tree.levels):
            self.register_buffer(f"level_{i}", cents.detach().float().clone(), persistent=False)
        self.depth = vocab.depth
        self._tree: KMeansTree | None = None
        self._tree_key: tuple | None = None

    def train(self, mode: bool = True) -> VisualTokenizer:
        # Frozen whatever the surrounding model does.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.level_0.device

    def _centroid_tree(self) -> KMeansTree:
        # Rebuilt only when the buffers moved (e.g. after .to(device)), so norms are cached per device.
        levels = [getattr(self, f"level_{i}") for i in range(self.depth)]
        key = tuple((c.data_ptr(), c.device) for c in levels)
        if self._tree_key != key:
            self._tree, self._tree_key = KMeansTree(self.branching, levels), key
        return self._tree

    def _descend(self, x: torch.Tensor) -> torch.Tensor:
        """KMeansTree.assign_descent's leaf ids for a chunk of clip features (N, D), without a host sync: every row
        gathers its own node's `branching` children at each level (N x branching x D floats, bounded by
        clips_per_batch), where the tree's version groups rows by node, which needs the group sizes on the host
        (a sync per level and bucket inside every training step)."""
        tree, b = self._centroid_tree(), self.branching
        x = x.float()
        node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        children = torch.arange(b, device=x.device)
        for cents, norms in zip(tree.levels, tree._norms):
            rows = node[:, None] * b + children  # (N, b)
            d = torch.baddbmm(norms[rows][:, None, :], x[:, None, :], cents[rows].transpose(1, 2), alpha=-2)
            node = rows.gather(1, d.squeeze(1).argmin(1, keepdim=True)).squeeze(1)
        return node

    @torch.no_grad()
    def forward(
        self, frames: torch.Tensor, num_frames: torch.Tensor | None = None, return_features: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """-> (ids, valid), or (ids, valid, clip features (B, n_clips, D)) with return_features
        (the teacher regresses masked clips' features)."""
        if frames.ndim != 5 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (B, T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        n = t // self.frames_per_clip
        if n == 0:
            raise ValueError(f"{t} frames is fewer than one clip of {self.frames_per_clip}")
        dev = self.device
        fpc = self.frames_per_clip
        clips = frames[:, : n * fpc].reshape(b * n, fpc, *frames.shape[2:])
        tree = self._centroid_tree()
        assign = tree.assign_exact if self.method == "exact" else self._descend
        ids = torch.empty(b * n, dtype=torch.long, device=dev)
        all_feats = []
        for s in range(0, b * n, self.clips_per_batch):
            feats = self.encoder.encode_clips(clips[s : s + self.clips_per_batch].to(dev, non_blocking=True))
            ids[s : s + self.clips_per_batch] = assign(feats.float())
            if return_features:
                all_feats.append(feats.float())
        ids = ids.reshape(b, n)
        ends = (torch.arange(n, device=dev) + 1) * fpc  # clip j needs frames [j*fpc, (j+1)*fpc)
        if num_frames is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=dev)
        else:
            num_frames = torch.as_tensor(num_frames, device=dev)
            if num_frames.shape != (b,):
                raise ValueError(f"num_frames must have shape ({b},), got {tuple(num_frames.shape)}")
            valid = ends[None, :] <= num_frames[:, None]
        ids = ids.masked_fill(~valid, 0)
        if return_features:
            return ids, valid, torch.cat(all_feats).reshape(b, n, -1)
        return ids, valid
