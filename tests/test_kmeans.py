"""Hierarchical k-means: cluster recovery, determinism, small nodes, and a real 2-rank gloo fit."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videobert_ds.visual.kmeans import KMeansTree, _reseed_empty, fit_kmeans_tree, nearest

# Enough init samples that no rank ever subsamples: the condition for a 2-rank fit to equal 1 rank.
NO_SUBSAMPLING = 4096


def blobs(seed: int = 0, per_blob: int = 40, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """16 tight blobs in 4 well-separated groups of 4 (so a 4x4 tree can recover them); rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randn(4, dim, generator=g) * 30
    centers = (groups[:, None] + torch.randn(4, 4, dim, generator=g) * 5).reshape(16, dim)
    labels = torch.arange(16).repeat_interleave(per_blob)
    x = centers[labels] + torch.randn(len(labels), dim, generator=g) * 0.5
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def purity(pred: torch.Tensor, labels: torch.Tensor) -> float:
    hits = sum(int(torch.bincount(labels[pred == c]).max()) for c in pred.unique())
    return hits / len(labels)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards(x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor, dict]]:
    """Per scenario: (rank 0's rows, rank 1's rows, fit options); the 1-rank reference fits their concatenation."""
    whole = {"init_samples": NO_SUBSAMPLING}
    return {
        "halves": (x[: len(x) // 2], x[len(x) // 2 :], whole),
        # Split by blob: at level 1 each rank holds zero points at half of the nodes.
        "by_blob": (x[y < 8], x[y >= 8], whole),
        "rank1_empty": (x, x[:0], whole),
        # Small gathers: the init samples travel in several chunks, cut differently than on 1 rank.
        "by_blob_chunked": (x[y < 8], x[y >= 8], {"init_samples": NO_SUBSAMPLING, "gather_rows": 64}),
    }


def _fit(x: torch.Tensor, opts: dict) -> KMeansTree:
    return fit_kmeans_tree(x, 2, 4, seed=7, progress=False, **opts)


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        x, y = blobs()
        result = {name: _fit(parts[rank], parts[2]).levels for name, parts in _shards(x, y).items()}
        # With subsampling (16 points per node per rank) the fit differs from 1 rank's but the ranks agree.
        result["subsampled"] = _fit(x[rank::2], {"init_samples": 16, "gather_rows": 40}).levels
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_two_rank_fit_matches_one_rank(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    x, y = blobs()
    assert all(torch.equal(c0, c1) for c0, c1 in zip(r0["subsampled"], r1["subsampled"]))
    assert purity(KMeansTree(4, r0["subsampled"]).assign_descent(x), y) >= 0.95
    for name, (a, b, opts) in _shards(x, y).items():
        ref = _fit(torch.cat([a, b]), opts)
        for level, (c_ref, c0, c1) in enumerate(zip(ref.levels, r0[name], r1[name])):
            assert torch.equal(c0, c1), f"{name}: ranks disagree at level {level}"
            torch.testing.assert_close(c0, c_ref, atol=1e-5, rtol=1e-5, msg=f"{name}: level {level}")
        dist_tree = KMeansTree(4, r0[name])
        assert torch.equal(dist_tree.assign_descent(x), ref.assign_descent(x)), name
