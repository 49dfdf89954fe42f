"""Key frames of the visual words: for every word, the middle frame of the training clip nearest its centroid.

A visual word is an abstract centroid; to show one to a person (text -> video generation renders a sampled
word sequence as pictures) we need a real frame. `select_keyframes` finds, over all ranks' clips, the clip
whose feature is nearest each leaf centroid (nearest over all clips, so a word no clip is assigned to still
gets one) and keeps a thumbnail of its middle frame.

File: `<vocab stem>_keyframes.safetensors` beside the vocabulary (`keyframes_path`), with tensors `frames`
(V, h, w, 3) uint8 and `distances` (V,) float64 (squared L2, feature to centroid), and string metadata
`format`, `words`, and `clips` (JSON list of [sample key, clip index] per word).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open

from videobert_ds.core.atomic import save_safetensors

FORMAT = "videobert-keyframes-v1"
_TILE_ELEMS = 1 << 24  # distance-matrix elements per tile (bounded memory whatever N and V are)
CANDIDATES = 8  # rows per leaf short-listed by float32 distances, then decided in float64

ClipId = tuple[str, int]  # (sample key, clip index within the sample)


def keyframes_path(vocab_path: str | os.PathLike) -> Path:
    """Where the key frames of a vocabulary file live: `<stem>_keyframes.safetensors` in the same folder."""
    p = Path(vocab_path)
    return p.with_name(f"{p.stem}_keyframes.safetensors")


def thumbnails(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames (M, H, W, C) -> uint8 (M, size, round(size * W / H), 3), resized with antialiasing
    (each image on its own, so a thumbnail never depends on what else is in the batch)."""
    if frames.ndim != 4:
        raise ValueError(f"frames must be (M, H, W, C), got {tuple(frames.shape)}")
    m, h, w, c = frames.shape
    if c == 1:
        frames = frames.expand(m, h, w, 3)
    out_w = max(1, round(size * w / h))
    x = frames[..., :3].permute(0, 3, 1, 2).float()
    if m:
        x = F.interpolate(x, size=(size, out_w), mode="bilinear", antialias=True, align_corners=False)
    else:
        x = x.new_zeros(0, 3, size, out_w)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class _Foreign(Exception):
    pass


@dataclass
class KeyFrames:
    frames: torch.Tensor  # (V, h, w, 3) uint8, on the CPU
    distances: torch.Tensor  # (V,) float64
    clips: list[ClipId]  # per word, the clip its frame comes from

    @property
    def num_words(self) -> int:
        return self.frames.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file under a temporary name in the same folder, then rename it."""
        path = Path(path)
        meta = {"format": FORMAT, "words": str(self.num_words), "clips": json.dumps([list(c) for c in self.clips])}
        tensors = {"frames": self.frames.cpu().contiguous(), "distances": self.distances.double().cpu().contiguous()}
        return save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeyFrames:
        """Read a key-frames file; a missing or foreign file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"key frames file not found: {path} (it is written by a build_vocab run "
                "with keyframe_size > 0, beside the vocabulary)"
            )
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise _Foreign(meta.get("format"))
                frames, distances = f.get_tensor("frames"), f.get_tensor("distances")
                clips = [(str(k), int(c)) for k, c in json.loads(meta["clips"])]
        except _Foreign as e:
            raise ValueError(f"{path} is not a key frames file (format {e.args[0]!r}, want {FORMAT!r})") from None
        except Exception as e:  # safetensors header errors, missing tensors or metadata, bad JSON
            raise ValueError(f"cannot read key frames {path}: {type(e).__name__}: {e}") from None
        if frames.dtype != torch.uint8 or frames.ndim != 4 or len(clips) != frames.shape[0]:
            raise ValueError(f"{path}: frames must be (V, h, w, 3) uint8 with one clip per word")
        return cls(frames, distances, clips)


def _local_nearest(
    features: torch.Tensor, leaves: torch.Tensor, clips: list[ClipId]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per leaf, (squared distance (V,) float64, row index (V,) int64, -1 when there are no rows) of the
    nearest row of features (N, D), equal distances going to the smallest clip identity.

    Float32 GEMM distances depend in their last bits on how rows are tiled, and a leaf fit to two
    near-identical clips sits at the same distance from both; so the GEMM only shortlists CANDIDATES
    rows per leaf and the winner is decided on float64 distances computed pair by pair, values that do
    not depend on which rank or tile a clip was in."""
    v = leaves.shape[0]
    if features.shape[0] == 0:
        return (
            torch.full((v,), float("inf"), dtype=torch.float64, device=leaves.device),
            torch.full((v,), -1, dtype=torch.long, device=leaves.device),
        )
    x, c = features.float(), leaves.float()
    c_norm = (c**2).sum(1)
    rows = max(1, _TILE_ELEMS // max(1, v))
    short_d = torch.empty((v, 0), device=c.device)
    short_i = torch.empty((v, 0), dtype=torch.long, device=c.device)
    for s in range(0, x.shape[0], rows):
        t = x[s : s + rows]
        d = ((t**2).sum(1, keepdim=True) + c_norm[None] - 2 * t @ c.T).T  # (V, R)
        both_d = torch.cat([short_d, d], 1)
        both_i = torch.cat([short_i, torch.arange(s, s + t.shape[0], device=c.device).expand(v, -1)], 1)
        short_d, pick = both_d.topk(min(CANDIDATES, both_d.shape[1]), dim=1, largest=False)
        short_i = both_i.gather(1, pick)
    c64 = c.double()
    exact = torch.stack([((x[short_i[:, j]].double() - c64) ** 2).sum(1) for j in range(short_i.shape[1])], 1)
    best, col = exact.min(1)
    idx = short_i.gather(1, col[:, None]).squeeze(1)
    for w in ((exact == best[:, None]).sum(1) > 1).nonzero().flatten().tolist():  # exact ties: rare
        tied = short_i[w][exact[w] == best[w]].tolist()
        idx[w] = min(tied, key=lambda i: clips[i])
    return best, idx


def select_keyframes(
    features: torch.Tensor, thumbs: torch.Tensor, clips: list[ClipId], leaves: torch.Tensor
) -> KeyFrames:
    """The key frame of every leaf over all ranks' clips (a collective when torch.distributed is up).

    features (N, D) and thumbs (N, h, w, 3) uint8 are this rank's clips, `clips` their identities, leaves
    (V, D) the vocabulary's words. The nearest clip wins; equal distances go to the smallest clip identity,
    then to the lowest rank, so the result is the same for any number of ranks holding the same clips.
    Every rank returns the same KeyFrames.
    """
    if not (features.shape[0] == thumbs.shape[0] == len(clips)):
        raise ValueError(f"{features.shape[0]} features, {thumbs.shape[0]} thumbnails and {len(clips)} clip ids")
    device = leaves.device
    dist_on = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if dist_on else 0
    dists, idx = _local_nearest(features.to(device), leaves, clips)
    best = dists.clone()
    if dist_on:
        dist.all_reduce(best, op=dist.ReduceOp.MIN)
    # Candidates: the words where this rank's nearest clip ties the global minimum.
    cands = [(w, clips[i]) for w, (i, ok) in enumerate(zip(idx.tolist(), (dists == best).tolist())) if ok and i >= 0]
    parts: list = [cands]
    if dist_on:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, cands)
    winner: dict[int, tuple[ClipId, int]] = {}
    for r, part in enumerate(parts):  # ascending ranks and a strict `<`: a full tie goes to the lowest rank
        for w, clip in part:
            clip = (str(clip[0]), int(clip[1]))
            if w not in winner or clip < winner[w][0]:
                winner[w] = (clip, r)
    v = leaves.shape[0]
    if len(winner) != v:
        raise ValueError(f"no clips to take key frames from ({len(winner)} of {v} words found one)")
    h, w_, _ = thumbs.shape[1:] if thumbs.shape[0] else (0, 0, 0)
    size = torch.tensor([h, w_], device=device)
    if dist_on:  # a rank without clips learns the thumbnail size from the others
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
    frames = torch.zeros((v, int(size[0]), int(size[1]), 3), dtype=torch.uint8, device=device)
    mine = [w for w, (_, r) in winner.items() if r == rank]
    if mine:
        rows = idx[torch.tensor(mine, device=device)].cpu()
        frames[torch.tensor(mine, device=device)] = thumbs[rows].to(device)
    if dist_on:  # exactly one rank contributes each word's frame; the others add zeros
        dist.all_reduce(frames, op=dist.ReduceOp.SUM)
    return KeyFrames(frames.cpu(), best.cpu(), [winner[w][0] for w in range(v)])
