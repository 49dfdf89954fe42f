"""Per-level k-means++ initialisation, from samples gathered off all ranks.

Per level: an all_gather of per-node sample counts, then all_gathers of padded sample buffers (size
fixed by the gathered counts, so equal on every rank) in node chunks; every rank then runs the same
seeded k-means++ on the same gathered samples and so gets the same initial centroids. The k-means++
input of a node is the concatenation, in rank order, of each rank's samples of that node, and its
random numbers are drawn per node up front, so batching differences do not change the picks.

Small nodes: a node with fewer points than `branching` still gets `branching` children. k-means++
picks each distinct point once and then repeats points, so some children are duplicates (left where
they are: Lloyd does not re-seed them). A node with no points at all gets `branching` copies of its
parent's centroid.
"""

from __future__ import annotations

import math

import torch

from videobert_ds.visual.kmeans.comm import _Comm
from videobert_ds.visual.kmeans.rng import _mix
from videobert_ds.visual.kmeans.tiling import _groups, _pad


def _init_level(
    x: torch.Tensor,
    counts: torch.Tensor,
    parent: torch.Tensor,
    b: int,
    seed: int,
    level: int,
    cap: int,
    gather_rows: int,
    comm: _Comm,
) -> torch.Tensor:
    """k-means++ centroids (num_nodes, b, D) for every node of a level, from samples gathered off all ranks."""
    num_nodes, dim, dev = counts.numel(), x.shape[1], x.device
    counts_l = counts.tolist()
    # Each rank's seeded subsample: all points of a node when it holds <= cap, else cap random ones
    # (kept in data order, so the no-subsampling case sees exactly the data order).
    take = [min(c, cap) for c in counts_l]
    if any(c > cap for c in counts_l):
        gen = torch.Generator(device=dev).manual_seed(_mix(seed, level, comm.rank, 1))
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=dev)
        start = 0
        for c in counts_l:
            if c > cap:
                keep[start : start + c] = False
                keep[start + torch.randperm(c, generator=gen, device=dev)[:cap]] = True
            start += c
        sample = x[keep]
    else:
        sample = x

    # Every rank learns every rank's per-node sample counts, so all take the same chunking below.
    all_take = torch.stack(comm.all_gather(torch.tensor(take, dtype=torch.long, device=dev))).cpu().tolist()
    # The k-means++ random numbers of every node, drawn up front: the picks then do not depend on how
    # nodes are chunked or batched (which differs with the number of ranks).
    trials = 2 + int(math.log(b))
    uniforms = torch.rand(
        num_nodes, b, trials, generator=torch.Generator().manual_seed(_mix(seed, level, 2)), dtype=torch.float64
    ).to(dev)
    out = parent[:, None, :].expand(num_nodes, b, dim).clone()  # a node with no points: parent copies
    lo, mine_start = 0, 0
    while lo < num_nodes:
        # The longest run of nodes whose samples fit in `gather_rows` rows on every rank (at least one node).
        rows = [0] * comm.world
        hi = lo
        while hi < num_nodes:
            grown = [rows[r] + all_take[r][hi] for r in range(comm.world)]
            if hi > lo and max(grown) > gather_rows:
                break
            rows, hi = grown, hi + 1
        buf = torch.zeros(max(1, max(rows)), dim, device=dev)  # never empty: gloo and NCCL dislike 0-size
        mine = rows[comm.rank]
        buf[:mine] = sample[mine_start : mine_start + mine]
        mine_start += mine
        pts = torch.cat(comm.all_gather(buf))
        # Row of each node's samples in `pts`: rank r's block starts at r * len(buf), in node order.
        idx, lengths, nodes = [], [], []
        offs = [r * buf.shape[0] for r in range(comm.world)]
        for nd in range(lo, hi):
            rows_nd = []
            for r in range(comm.world):
                rows_nd.append(torch.arange(offs[r], offs[r] + all_take[r][nd]))
                offs[r] += all_take[r][nd]
            rows_nd = torch.cat(rows_nd)
            if len(rows_nd):
                idx.append(rows_nd)
                lengths.append(len(rows_nd))
                nodes.append(nd)
        for group in _groups(lengths, dim):
            g_nodes = torch.tensor([nodes[i] for i in group], device=dev)
            g_idx, valid = _pad([idx[i] for i in group], dev)
            out[g_nodes] = _kmeans_pp(pts[g_idx], valid, uniforms[g_nodes])
        lo = hi
    return out


def _kmeans_pp(pts: torch.Tensor, valid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Batched greedy k-means++ seeding (as scikit-learn's): pts (G, L, D) padded sample sets, valid (G, L),
    u (G, k, T) uniforms in [0, 1) with T candidates per step.

    Each step draws T candidates by inverse CDF of D^2 (with the node's own uniforms) and keeps the one
    that lowers the potential most; greedy trials make poor seedings (two seeds in one true cluster)
    much rarer than plain k-means++. Once every point of a set coincides with a chosen centroid, further
    picks repeat the first one (duplicate centroids: "Small nodes" in the module docstring).
    """
    g = pts.shape[0]
    k = u.shape[1]
    rows = torch.arange(g, device=pts.device)
    sq = (pts**2).sum(2)
    n = valid.sum(1)
    first = (u[:, 0, 0] * n).long().clamp_(max=n - 1)
    chosen = [first]

    def dist_to(i: torch.Tensor) -> torch.Tensor:
        # (G, L, T) squared distances to candidates i (G, T) via ||p||^2 - 2 p.c + ||c||^2 in one bmm.
        c = pts[rows[:, None], i]
        # (c @ pts^T)^T: MKL runs this orientation faster than pts @ c^T for a few columns.
        d = sq[:, :, None] - 2 * torch.bmm(c, pts.transpose(1, 2)).transpose(1, 2) + sq[rows[:, None], i][:, None, :]
        return d.clamp_(min=0).masked_fill_(~valid[:, :, None], 0)

    d2 = dist_to(first[:, None])[:, :, 0]
    for step in range(1, k):
        cdf = d2.double().cumsum(1)
        total = cdf[:, -1]
        cand = torch.searchsorted(cdf, u[:, step] * total[:, None], right=True)
        cand = torch.minimum(cand, (n - 1)[:, None])
        new_d2 = torch.minimum(d2[:, :, None], dist_to(cand))  # (G, L, T)
        best = new_d2.double().sum(1).argmin(1)
        pick = torch.where(total > 0, cand[rows, best], first)
        chosen.append(pick)
        d2 = torch.where((total > 0)[:, None], new_d2[rows, :, best], d2)
    return pts[rows[:, None], torch.stack(chosen, 1)]
