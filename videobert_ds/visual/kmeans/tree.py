"""The fitted hierarchical k-means tree and nearest-centroid assignment.

The tree has `depth` levels of `branching` children each. Level l holds `branching**(l+1)` centroids;
row r of level l is the child `r % branching` of row `r // branching` of level l-1, so a leaf's row
index at the last level is its path from the root written in base `branching` (the visual-word id).
Flat k-means is the depth-1 tree.

A node fit on fewer points than `branching` has duplicate children (see `kmeanspp`); their words are
never chosen by nearest-centroid assignment, which breaks ties to the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videobert_ds.visual.kmeans.tiling import _MAX_TILE, _node_batches


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
