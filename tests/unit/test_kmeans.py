"""Hierarchical k-means in one process: cluster recovery, determinism, small nodes, bad input."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.vectors import blobs, purity
from videobert_ds.visual.kmeans import KMeansTree, _reseed_empty, fit_kmeans_tree, nearest


def test_flat_kmeans_recovers_blobs():
    x, y = blobs()
    tree = fit_kmeans_tree(x, depth=1, branching=16, seed=0, progress=False)
    assert tree.num_leaves == 16 and tree.leaves.shape == (16, 16)
    assert purity(tree.assign_exact(x), y) >= 0.95


def test_hierarchical_kmeans_recovers_blobs_and_ids_are_paths():
    x, y = blobs()
    tree = fit_kmeans_tree(x, depth=2, branching=4, seed=0, progress=False)
    assert [tuple(c.shape) for c in tree.levels] == [(4, 16), (16, 16)]
    leaf = tree.assign_descent(x)
    assert purity(leaf, y) >= 0.95
    assert purity(tree.assign_exact(x), y) >= 0.95
    # The leaf id's base-4 leading digit is the top-level cluster the point descended into.
    assert torch.equal(leaf // 4, nearest(x, tree.levels[0]))


def test_same_seed_same_tree_other_seed_differs():
    x, _ = blobs()
    a = fit_kmeans_tree(x, 2, 4, seed=3, progress=False)
    b = fit_kmeans_tree(x, 2, 4, seed=3, progress=False)
    c = fit_kmeans_tree(x, 2, 4, seed=4, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.levels, b.levels))
    assert not all(torch.equal(p, q) for p, q in zip(a.levels, c.levels))


def test_nodes_smaller_than_branching_still_give_a_full_tree():
    x, _ = blobs()
    tree = fit_kmeans_tree(x[:5], depth=3, branching=4, seed=1, progress=False)
    assert tree.leaves.shape == (64, 16)
    assert torch.isfinite(tree.leaves).all()
    # Five distinct points land on five distinct leaves, by either assignment.
    assert len(set(tree.assign_descent(x[:5]).tolist())) == 5
    assert torch.equal(tree.assign_exact(x[:5]), tree.assign_descent(x[:5]))


def test_empty_cluster_is_reseeded_by_splitting_the_largest():
    cents = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]]])
    cnt = torch.tensor([[10.0, 0.0, 4.0]], dtype=torch.float64)
    sse = torch.tensor([[20.0, 0.0, 1.0]], dtype=torch.float64)
    _reseed_empty(cents, cnt, sse, torch.Generator().manual_seed(0))
    step = cents[0, 1] - 0.0
    assert step.abs().max() > 0 and torch.allclose(cents[0, 0], -step)  # split symmetrically about the old one
    assert torch.equal(cents[0, 2], torch.tensor([9.0, 9.0]))
    # End to end: groups far apart, every cluster ends up used.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 8, generator=g), torch.full((2, 8), 100.0)])
    tree = fit_kmeans_tree(x, depth=1, branching=4, seed=0, progress=False)
    assert len(set(tree.assign_exact(x).tolist())) == 4


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="no features"):
        fit_kmeans_tree(torch.zeros(0, 4), 1, 4, progress=False)
    with pytest.raises(ValueError, match="branching"):
        fit_kmeans_tree(torch.zeros(10, 4), 1, 1, progress=False)
    tree = fit_kmeans_tree(torch.randn(20, 4), 1, 4, progress=False)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        tree.assign_exact(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="level 0"):
        KMeansTree(4, [torch.zeros(3, 4)])
