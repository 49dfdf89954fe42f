"""The fit driver: a hierarchical k-means tree fit level by level, single-process or distributed.

Every node of a level is fit at once on the points its parent level assigned to it (greedy k-means++
initialisation in `kmeanspp`, then Lloyd iterations in `lloyd`). All numerical work runs on the
features' device. When torch.distributed is initialised, each rank passes only its own features and
all ranks make the same collective calls (see `comm`).

Same result on 1 rank and on W ranks (for one seed): the k-means++ input of a node is the
concatenation, in rank order, of each rank's samples of that node. When no rank holds more than
`init_samples` points at any node (so no rank subsamples), that input is exactly the points of the
node in the order of the 1-rank data = concatenation of the ranks' shards in rank order (k-means++
draws its random numbers per node up front, so batching differences do not matter either), and the
fits agree up to float32 summation order (same labels unless points sit on a tie; centroids equal to
~1e-6 relative). With subsampling the fits are equally valid but not identical.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm import tqdm

from videobert_ds.visual.kmeans.comm import _Comm
from videobert_ds.visual.kmeans.kmeanspp import _init_level
from videobert_ds.visual.kmeans.lloyd import _lloyd_level
from videobert_ds.visual.kmeans.tree import KMeansTree


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
