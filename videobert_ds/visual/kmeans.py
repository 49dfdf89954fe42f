"""Hierarchical k-means in torch, single-process or distributed over torch.distributed ranks.

The tree has `depth` levels of `branching` children each. Level l holds `branching**(l+1)` centroids;
row r of level l is the child `r % branching` of row `r // branching` of level l-1, so a leaf's row
index at the last level is its path from the root written in base `branching` (the visual-word id).
Flat k-means is the depth-1 tree.

Fitting goes level by level: every node of a level is fit at once on the points its parent level
assigned to it (greedy k-means++ initialisation, then Lloyd iterations). All numerical work runs on the
features' device.

Distributed fitting (when torch.distributed is initialised): each rank passes only its own features.
Every rank makes the same sequence of collective calls whatever it holds (zero points at a node, or
none at all), because every control decision is taken from all-reduced or all-gathered values:
  - initialisation: per level, an all_gather of per-node sample counts, then all_gathers of padded
    sample buffers (size fixed by the gathered counts, so equal on every rank) in node chunks; every
    rank then runs the same seeded k-means++ on the same gathered samples and so gets the same
    initial centroids.
  - Lloyd iterations: ONE all_reduce per iteration per level of [per-centroid sums | counts | SSE]
    in float64 (sums are float32 within pieces of <= 4096 points, then float64); the stopping test
    uses the reduced inertia, so all ranks stop after the same iteration.

Same result on 1 rank and on W ranks (for one seed): the k-means++ input of a node is the
concatenation, in rank order, of each rank's samples of that node. When no rank holds more than
`init_samples` points at any node (so no rank subsamples), that input is exactly the points of the
node in the order of the 1-rank data = concatenation of the ranks' shards in rank order (k-means++
draws its random numbers per node up front, so batching differences do not matter either), and the
fits agree up to float32 summation order (same labels unless points sit on a tie; centroids equal to
~1e-6 relative). With subsampling the fits are equally valid but not identical.

Small nodes: a node with fewer points than `branching` still gets `branching` children. k-means++
picks each distinct point once and then repeats points, so some children are duplicates (their
words are never chosen by nearest-centroid assignment, which breaks ties to the lowest index); such
empty children are left where they are. A node with no points at all gets `branching` copies of its
parent's centroid.

Empty clusters during Lloyd in a node with at least `branching` points are re-seeded by splitting the
node's largest cluster (its centroid is moved a small step along a seeded random direction, the empty
one the opposite way); this needs no extra communication and is identical on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm import tqdm

# Bound temporary (rows x columns) distance matrices to this many elements (64 MiB in float32).
_MAX_TILE = 1 << 24
# Relative size of the split step for re-seeding an empty cluster (as FAISS does, 1/1024).
_SPLIT_EPS = 1.0 / 1024


@dataclass
class KMeansTree:
    """Centroids of a hierarchical k-means tree: `levels[l]` is (branching**(l+1), D) float32."""

    branching: int
    levels: list[torch.Tensor]
    iterations: list[int] = field(default_factory=list)  # Lloyd iterations run per level (fit statistics)
    _norms: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.branching < 2:
            raise ValueError(f"branching must be >= 2, got {self.branching}")
        if not self.levels:
            raise ValueError("a k-means tree needs at least one level")
        dim = self.levels[0].shape[1]
        for level, cents in enumerate(self.levels):
            want = (self.branching ** (level + 1), dim)
            if tuple(cents.shape) != want:
                raise ValueError(f"level {level} centroids have shape {tuple(cents.shape)}, expected {want}")
        self._norms = [(c.float() ** 2).sum(1) for c in self.levels]

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def dim(self) -> int:
        return int(self.levels[0].shape[1])

    @property
    def num_leaves(self) -> int:
        return self.branching**self.depth

    @property
    def leaves(self) -> torch.Tensor:
        return self.levels[-1]

    def to(self, device: torch.device | str) -> KMeansTree:
        return KMeansTree(self.branching, [c.to(device) for c in self.levels], list(self.iterations))

    def assign_exact(self, x: torch.Tensor) -> torch.Tensor:
        """Id of the nearest leaf centroid (brute force over all leaves) for each row of x (N, D)."""
        return nearest(x, self.leaves, self._norms[-1])

    def assign_descent(self, x: torch.Tensor) -> torch.Tensor:
        """Leaf id reached by descending the tree (nearest of the `branching` children at each level).

        This is the partition the tree was fit with; it can differ from the exact nearest leaf.
        """
        x = _check_features(x, self.dim)
        b = self.branching
        out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        step = max(1, _MAX_TILE // (4 * self.dim))  # rows per pass: bounds every gathered batch
        for s in range(0, x.shape[0], step):
            xs = x[s : s + step]
            node = torch.zeros(xs.shape[0], dtype=torch.long, device=x.device)
            for cents, norms in zip(self.levels, self._norms):
                nxt = torch.empty_like(node)
                for nodes, idx, valid in _node_batches(node, self.dim):
                    rows = nodes[:, None] * b + torch.arange(b, device=x.device)  # (G, b) children
                    d = torch.baddbmm(norms[rows][:, None, :], xs[idx], cents[rows].transpose(1, 2), alpha=-2)
                    nxt[idx[valid]] = rows.gather(1, d.argmin(2))[valid]
                node = nxt
            out[s : s + step] = node
        return out


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


def nearest(x: torch.Tensor, cents: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Row index of the nearest centroid (squared L2) for each row of x, computed in bounded tiles."""
    x = _check_features(x, cents.shape[1])
    if norms is None:
        norms = (cents.float() ** 2).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    rows = max(1, _MAX_TILE // max(1, cents.shape[0]))
    for s in range(0, x.shape[0], rows):
        # ||x||^2 is the same for every centroid, so it is left out of the argmin.
        out[s : s + rows] = (norms - 2 * x[s : s + rows] @ cents.T).argmin(1)
    return out


def _check_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"features must be (N, {dim}), got {tuple(x.shape)}")
    return x.float()


class _Comm:
    """The collectives k-means needs; single-process no-ops when torch.distributed is not initialised."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.rank = dist.get_rank(group) if self.active else 0
        self.world = dist.get_world_size(group) if self.active else 1

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, group=self.group)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.active:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t.contiguous(), group=self.group)
        return out


def fit_kmeans_tree(
    x: torch.Tensor,
    depth: int,
    branching: int,
    *,
    seed: int = 0,
    max_iter: int = 25,
    tol: float = 1e-4,
    init_samples: int | None = None,
    gather_rows: int = 1 << 16,
    progress: bool = True,
    group: dist.ProcessGroup | None = None,
) -> KMeansTree:
    """Fit a hierarchical k-means tree on this rank's features x (N, D) (N may be 0 on some ranks).

    depth, branching: tree shape (branching**depth leaves). seed: makes the fit deterministic.
    max_iter: Lloyd iterations per level at most; tol: stop a level when the relative drop of the
    (global) inertia is below it. init_samples: points per node each rank contributes to k-means++
    (default 16 * branching); gather_rows: rows per rank per all_gather of those samples (bounds memory).
    progress: tqdm over tree nodes on rank 0. group: the process group when distributed.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if branching < 2:
        raise ValueError(f"branching must be >= 2, got {branching}")
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, D) tensor, got shape {tuple(x.shape)}")
    if max_iter < 1 or tol < 0:
        raise ValueError(f"need max_iter >= 1 and tol >= 0, got {max_iter} and {tol}")
    init_samples = init_samples or 16 * branching
    comm = _Comm(group)
    total = int(comm.all_reduce(torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)).item())
    if total == 0:
        raise ValueError("no features to fit k-means on (every rank holds 0 rows)")

    x = x.float()
    node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    levels: list[torch.Tensor] = []
    iterations: list[int] = []
    parent = torch.zeros(1, x.shape[1], device=x.device)
    num_nodes_total = sum(branching**lv for lv in range(depth))
    bar = tqdm(total=num_nodes_total, desc="k-means tree nodes", disable=not progress or comm.rank != 0)
    for level in range(depth):
        # Group the points of each node contiguously (stable, so the data order within a node is kept).
        order = torch.argsort(node, stable=True)
        x, node = x[order], node[order]
        num_nodes = branching**level
        counts = torch.bincount(node, minlength=num_nodes)
        cents = _init_level(x, counts, parent, branching, seed, level, init_samples, gather_rows, comm)
        cents, assign, iters = _lloyd_level(x, node, counts, cents, seed, level, max_iter, tol, comm, bar)
        iterations.append(iters)
        node = node * branching + assign
        parent = cents.reshape(num_nodes * branching, -1)
        levels.append(parent)
        bar.update(num_nodes)
    bar.close()
    return KMeansTree(branching, levels, iterations)


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
    uniforms = torch.rand(num_nodes, b, trials, generator=torch.Generator().manual_seed(_mix(seed, level, 2)),
                          dtype=torch.float64).to(dev)
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


def _kmeans_pp(pts: torch.Tensor, valid: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Batched greedy k-means++ seeding (as scikit-learn's): pts (G, L, D) padded sample sets, valid (G, L),
    u (G, k, T) uniforms in [0, 1) with T candidates per step.

    Each step draws T candidates by inverse CDF of D^2 (with the node's own uniforms) and keeps the one
    that lowers the potential most; greedy trials make poor seedings (two seeds in one true cluster)
    much rarer than plain k-means++. Once every point of a set coincides with a chosen centroid, further
    picks repeat the first one (duplicate centroids, documented above).
    """
    g = pts.shape[0]
    k, trials = u.shape[1], u.shape[2]
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


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), so (seed, level, rank, purpose) streams differ."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
