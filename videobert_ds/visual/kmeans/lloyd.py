"""Per-level Lloyd iterations, batched over every node of a level, and re-seeding of empty clusters.

ONE all_reduce per iteration per level of [per-centroid sums | counts | SSE] in float64 (sums are
float32 within pieces of <= 4096 points, then float64); the stopping test uses the reduced inertia,
so all ranks stop after the same iteration.

Empty clusters in a node with at least `branching` points are re-seeded by splitting the node's
largest cluster (its centroid is moved a small step along a seeded random direction, the empty one
the opposite way); this needs no extra communication and is identical on every rank.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from videobert_ds.visual.kmeans.comm import _Comm
from videobert_ds.visual.kmeans.rng import _mix
from videobert_ds.visual.kmeans.tiling import _MAX_TILE, _groups, _pad

# Relative size of the split step for re-seeding an empty cluster (as FAISS does, 1/1024).
_SPLIT_EPS = 1.0 / 1024


def _lloyd_level(
    x: torch.Tensor,
    node: torch.Tensor,
    counts: torch.Tensor,
    cents: torch.Tensor,
    seed: int,
    level: int,
    max_iter: int,
    tol: float,
    comm: _Comm,
    bar: tqdm,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd iterations for every node of a level at once: (centroids, each point's child index, iterations)."""
    num_nodes, b, dim = cents.shape
    layout = _Layout(x, counts, b)
    xsq = (x**2).sum(1)
    gen = torch.Generator().manual_seed(_mix(seed, level, 3))  # CPU: split directions, same on all ranks
    prev = math.inf
    for it in range(max_iter):
        # One collective per iteration: [sums (D) | count | SSE] for every centroid of the level.
        buf = torch.zeros(num_nodes * b, dim + 2, dtype=torch.float64, device=x.device)
        assign, mind = layout.step(x, xsq, cents, buf[:, :dim])
        flat = node * b + assign
        buf[:, dim].index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        buf[:, dim + 1].index_add_(0, flat, mind.double())
        comm.all_reduce(buf)
        buf = buf.reshape(num_nodes, b, dim + 2)
        cnt, sse = buf[..., dim], buf[..., dim + 1]
        inertia = float(sse.sum())
        new = torch.where(cnt[..., None] > 0, (buf[..., :dim] / cnt.clamp(min=1)[..., None]).float(), cents)
        _reseed_empty(new, cnt.clone(), sse.clone(), gen)
        cents = new
        bar.set_postfix(level=level, iter=it, inertia=f"{inertia:.4g}")
        if prev - inertia <= tol * inertia:
            break
        prev = inertia
    assign, _ = layout.step(x, xsq, cents)
    return cents, assign, it + 1


class _Layout:
    """Node-sorted points cut into pieces, batched into padded groups for one bmm per group.

    Points of a node are contiguous (sorted by node). A per-node GEMM loop costs thousands of tiny
    kernel calls at deep levels; padded batches of similar-length pieces cost a few large ones. The
    padded copies of x are kept for the level's iterations while they fit in `cache_elems` (padding
    at most doubles the rows), and gathered again each time beyond that.
    """

    def __init__(self, x: torch.Tensor, counts: torch.Tensor, b: int, cache_elems: int = 1 << 29) -> None:
        dev, dim = x.device, x.shape[1]
        piece = max(1, _MAX_TILE // (4 * dim))  # long runs (e.g. the root) are cut into pieces
        starts, lengths, nodes = [], [], []
        pos = 0
        for nd, c in enumerate(counts.tolist()):
            for s in range(0, c, piece):
                starts.append(pos + s)
                lengths.append(min(piece, c - s))
                nodes.append(nd)
            pos += c
        self.b = b
        self.slot = torch.arange(len(starts) + 1, device=dev) * b  # first sum row of each piece in a group
        self.groups = []
        cached = 0
        for group in _groups(lengths, dim):
            idx, valid = _pad([torch.arange(starts[i], starts[i] + lengths[i]) for i in group], dev)
            g_nodes = torch.tensor([nodes[i] for i in group], device=dev)
            xb = None
            if cached + idx.numel() * dim <= cache_elems:
                xb, cached = x[idx], cached + idx.numel() * dim
            rows = (g_nodes[:, None] * b + torch.arange(b, device=dev)).flatten()
            self.groups.append((g_nodes, idx, valid, idx[valid], xb, rows))

    def step(
        self, x: torch.Tensor, xsq: torch.Tensor, cents: torch.Tensor, sums: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest child index and squared distance of each point against its own node's children;
        with `sums` ((nodes*b, D) float64), also adds each cluster's sum of points into it."""
        assign = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        mind = torch.empty(x.shape[0], device=x.device)
        norms = (cents**2).sum(2)
        for nodes, idx, valid, pos, xb, rows in self.groups:
            xb = x[idx] if xb is None else xb
            d = torch.baddbmm(norms[nodes][:, None, :], xb, cents[nodes].transpose(1, 2), alpha=-2)
            val, a = d.min(2)
            assign[pos] = a[valid]
            mind[pos] = (val[valid] + xsq[pos]).clamp_(min=0)
            if sums is not None:
                # Cluster sums within the group in float32 (each piece has <= `piece` points), then
                # added in float64; padded rows go to a dummy last row.
                g = nodes.shape[0]
                target = torch.where(valid, self.slot[:g, None] + a, g * self.b).flatten()
                part = torch.zeros(g * self.b + 1, xb.shape[2], device=xb.device)
                part.index_add_(0, target, xb.reshape(-1, xb.shape[2]))
                sums.index_add_(0, rows, part[:-1].double())
        return assign, mind


def _reseed_empty(cents: torch.Tensor, cnt: torch.Tensor, sse: torch.Tensor, gen: torch.Generator) -> None:
    """Re-seed empty clusters in place by splitting the node's largest cluster.

    Only in nodes with at least as many points as clusters: in a smaller node some clusters must stay
    empty, and its empty centroids keep their k-means++ places (duplicates of its points, never chosen).
    """
    b, dim = cents.shape[1], cents.shape[2]
    empty = torch.nonzero((cnt == 0) & (cnt.sum(1) >= b)[:, None]).tolist()
    for nd, j in empty:
        big = int(cnt[nd].argmax())
        c_big = float(cnt[nd, big])
        if c_big < 2:
            continue
        # Step scaled by the cluster's RMS spread per dimension, so it is meaningful at any feature scale.
        spread = math.sqrt(max(float(sse[nd, big]), 0.0) / c_big / dim)
        scale = _SPLIT_EPS * (spread + float(cents[nd, big].abs().mean()) + 1e-12)
        step = torch.randn(dim, generator=gen).to(cents.device) * scale
        cents[nd, j] = cents[nd, big] + step
        cents[nd, big] = cents[nd, big] - step
        cnt[nd, j] = c_big // 2
        cnt[nd, big] = c_big - c_big // 2
        sse[nd, big] = sse[nd, j] = sse[nd, big] / 2
