"""Hierarchical k-means fitted by 2 real gloo ranks (torch.multiprocessing) against the 1-rank fit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers.distributed import free_port
from tests.helpers.vectors import blobs, purity
from videobert_ds.visual.kmeans import KMeansTree, fit_kmeans_tree

# Enough init samples that no rank ever subsamples: the condition for a 2-rank fit to equal 1 rank.
NO_SUBSAMPLING = 4096


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
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
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
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
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
