"""Hierarchical k-means in torch, single-process or distributed over torch.distributed ranks.

Modules, one job each:
  tree      the fitted tree (`KMeansTree`: centroid layout, exact and descent assignment) and `nearest`
  fit       `fit_kmeans_tree`: the level-by-level fit driver, and why 1 rank and W ranks agree
  kmeanspp  per-level k-means++ initialisation from samples gathered off all ranks
  lloyd     per-level batched Lloyd iterations and re-seeding of empty clusters
  comm      the cross-rank collectives (no-ops when not distributed)
  tiling    padded batches of ragged node groups, bounded in size
  rng       deterministic per-(seed, level, rank, purpose) seeds
"""

from __future__ import annotations

from videobert_ds.visual.kmeans.fit import fit_kmeans_tree
from videobert_ds.visual.kmeans.lloyd import _reseed_empty
from videobert_ds.visual.kmeans.tree import KMeansTree, nearest

__all__ = ["KMeansTree", "_reseed_empty", "fit_kmeans_tree", "nearest"]
