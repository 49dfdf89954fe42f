"""Bounded tiles for the k-means GEMMs: ragged groups of points (per tree node, or per piece of a node)
packed into padded batches, so a level costs a few large batched matmuls instead of thousands of tiny
ones, while no temporary (rows x columns) matrix exceeds `_MAX_TILE` elements."""

from __future__ import annotations

import torch

# Bound temporary (rows x columns) distance matrices to this many elements (64 MiB in float32).
_MAX_TILE = 1 << 24


def _node_batches(node: torch.Tensor, dim: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Points grouped by node id into padded batches for one bmm each: (node ids (G,), point index (G, L),
    valid (G, L)). Nodes are bucketed by the power of two of their point count (padding at most doubles
    the rows) and a batch holds at most _MAX_TILE padded elements of `dim` (a larger node is alone).
    All vectorised: a few kernels per bucket instead of a Python loop over (up to thousands of) nodes."""
    dev, n = node.device, node.shape[0]
    order = torch.argsort(node, stable=True)
    uniq, counts = torch.unique_consecutive(node[order], return_counts=True)
    seg = torch.repeat_interleave(torch.arange(uniq.shape[0], device=dev), counts)  # segment of each sorted point
    pos = torch.arange(n, device=dev) - (torch.cumsum(counts, 0) - counts)[seg]  # position within its segment
    bits = torch.floor(torch.log2(counts.double())).long()
    out = []
    for v in torch.unique(bits).tolist():
        segs = torch.nonzero(bits == v).flatten()
        longest = int(counts[segs].max())
        per_batch = max(1, _MAX_TILE // (longest * dim))
        for c in range(0, segs.shape[0], per_batch):
            chunk = segs[c : c + per_batch]
            slot = torch.full((uniq.shape[0],), -1, dtype=torch.long, device=dev)
            slot[chunk] = torch.arange(chunk.shape[0], device=dev)
            member = slot[seg] >= 0
            idx = torch.zeros(chunk.shape[0], longest, dtype=torch.long, device=dev)
            valid = torch.zeros(chunk.shape[0], longest, dtype=torch.bool, device=dev)
            idx[slot[seg[member]], pos[member]] = order[member]
            valid[slot[seg[member]], pos[member]] = True
            out.append((uniq[chunk], idx, valid))
    return out


def _groups(lengths: list[int], dim: int) -> list[list[int]]:
    """Batches of segments for padded batched GEMMs: similar lengths (same power of two, so padding at
    most doubles the rows) and at most _MAX_TILE padded elements per batch (a longer segment is alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (max(lengths[i], 1).bit_length(), i))
    out: list[list[int]] = []
    cur: list[int] = []
    cur_bits, cur_max = -1, 0
    for i in order:
        bits = max(lengths[i], 1).bit_length()
        longest = max(cur_max, lengths[i])
        if cur and (bits != cur_bits or (len(cur) + 1) * longest * dim > _MAX_TILE):
            out.append(cur)
            cur, cur_max = [], 0
            longest = lengths[i]
        cur.append(i)
        cur_bits, cur_max = bits, longest
    if cur:
        out.append(cur)
    return out


def _pad(rows: list[torch.Tensor], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index lists -> (G, L) padded index tensor (padding repeats each list's first index) and validity."""
    longest = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([r, r[:1].expand(longest - len(r))]) for r in rows]).to(dev)
    lens = torch.tensor([len(r) for r in rows], device=dev)
    return idx, torch.arange(longest, device=dev)[None, :] < lens[:, None]
