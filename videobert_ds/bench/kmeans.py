"""Benchmark the visual vocabulary: k-means fit and assignment throughput, ours vs faiss-cpu, one run.

    python -m videobert_ds.bench.kmeans [--n 16384] [--dim 1024] [--k 256] [--threads 2]

Prints features/s to fit and to assign for faiss.Kmeans (flat) and our flat k-means on the same
features, k and iteration cap, then our hierarchical trees (sqrt(k)^2 and the paper's 12^4 = 20,736
words), then descent vs exact-leaf assignment at several vocabulary sizes. Both libraries stop early
when the objective stops improving, so the Lloyd iterations each ran are printed too (for a tree,
summed over its levels). The features are a seeded Gaussian mixture (clip features are clustered, which is the
realistic case for k-means). Every timing is the best of `--repeat` runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from videobert_ds.visual.kmeans import KMeansTree, fit_kmeans_tree


def mixture(n: int, dim: int, modes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(modes, dim, generator=g)
    return centers[torch.randint(modes, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    """(best wall seconds over `repeat` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def mean_sq_dist(x: torch.Tensor, cents: torch.Tensor, ids: torch.Tensor) -> float:
    return float(((x - cents[ids]) ** 2).sum(1).mean())


def bench_faiss(x: torch.Tensor, k: int, iters: int, seed: int, repeat: int) -> dict:
    import faiss

    xn = np.ascontiguousarray(x.numpy())

    def fit():
        km = faiss.Kmeans(xn.shape[1], k, niter=iters, seed=seed, verbose=False)
        km.train(xn)
        return km

    fit_s, km = best_of(repeat, fit)
    assign_s, (_, ids) = best_of(repeat, lambda: km.index.search(xn, 1))
    ids = torch.from_numpy(ids[:, 0].astype(np.int64))
    # km.obj holds one objective per iteration run (faiss stops when it no longer changes).
    return {
        "fit_s": fit_s,
        "assign_s": assign_s,
        "iters": len(km.obj),
        "msd": mean_sq_dist(x, torch.from_numpy(km.centroids), ids),
    }


def bench_ours(x: torch.Tensor, depth: int, branching: int, iters: int, seed: int, repeat: int) -> dict:
    def fit(max_iter: int) -> KMeansTree:
        # tol=0: stop only when the objective stops improving, as faiss does.
        return fit_kmeans_tree(x, depth, branching, seed=seed, max_iter=max_iter, tol=0.0, progress=False)

    fit_s, tree = best_of(repeat, lambda: fit(iters))
    out = {"fit_s": fit_s, "tree": tree, "iters": sum(tree.iterations)}
    out["descent_s"], ids = best_of(repeat, lambda: tree.assign_descent(x))
    out["msd"] = mean_sq_dist(x, tree.leaves, ids)
    if depth == 1:
        out["exact_s"], ex = best_of(repeat, lambda: tree.assign_exact(x))
        out["msd"] = mean_sq_dist(x, tree.leaves, ex)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384, help="features (clips) to cluster")
    ap.add_argument("--dim", type=int, default=1024, help="feature dim (S3D: 1024)")
    ap.add_argument("--k", type=int, default=256, help="flat k for the faiss comparison (a square)")
    ap.add_argument("--iters", type=int, default=20, help="Lloyd iteration cap (per tree level)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    x = mixture(args.n, args.dim, modes=2 * args.k, seed=args.seed)
    side = int(round(args.k**0.5))
    # Warm both libraries up (thread pools, first-call allocations) outside the timings.
    bench_faiss(x[:2048], 16, 2, args.seed, 1)
    fit_kmeans_tree(x[:2048], 2, 4, seed=args.seed, max_iter=2, progress=False)
    print(
        f"# {args.n} x {args.dim} float32 features, Lloyd cap {args.iters}/level, {args.threads} threads, "
        f"best of {args.repeat}; torch {torch.__version__}, faiss {faiss.__version__}, "
        f"{platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"
    )

    f = bench_faiss(x, args.k, args.iters, args.seed, args.repeat)
    o = bench_ours(x, 1, args.k, args.iters, args.seed, args.repeat)
    h = bench_ours(x, 2, side, args.iters, args.seed, args.repeat)
    p = bench_ours(x, 4, 12, args.iters, args.seed, args.repeat)
    n = args.n
    rows = [
        ("faiss.Kmeans flat (random init)", args.k, f, f["assign_s"], "index.search"),
        ("ours flat (greedy k-means++)", args.k, o, o["exact_s"], "exact"),
        (f"ours tree {side}^2", side**2, h, h["descent_s"], "descent"),
        ("ours tree 12^4 (paper)", 12**4, p, p["descent_s"], "descent"),
    ]
    print("\n| k-means | words | fit features/s | Lloyd iterations | assign features/s | assignment | mean sq. dist |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, k, r, assign_s, how in rows:
        print(f"| {name} | {k} | {n / r['fit_s']:,.0f} | {r['iters']} | {n / assign_s:,.0f} | {how} | {r['msd']:.1f} |")
    print(
        f"\nours / faiss, flat k={args.k} (>1 = ours faster): fit {f['fit_s'] / o['fit_s']:.2f}x, "
        f"assign {f['assign_s'] / o['exact_s']:.2f}x"
    )

    # Assignment: descent vs exact nearest leaf, from the paper's size down to a tiny vocabulary.
    print("\n| vocabulary | batch | descent features/s | exact features/s | faster |")
    print("|---|---:|---:|---:|---|")
    tiny_x = mixture(4096, 64, modes=16, seed=args.seed + 1)
    tiny = fit_kmeans_tree(tiny_x, 2, 4, seed=args.seed, progress=False)
    paper = p["tree"]
    for label, tree, feats in (
        (f"12^4 x {args.dim}-d", paper, x[:2048]),
        (f"12^3 x {args.dim}-d", KMeansTree(12, paper.levels[:3]), x[:2048]),
        (f"{side}^2 x {args.dim}-d", h["tree"], x[:2048]),
        ("4^2 x 64-d", tiny, tiny_x),
    ):
        for batch in (256, feats.shape[0]):
            d, _ = best_of(args.repeat + 1, lambda tree=tree, x=feats[:batch]: tree.assign_descent(x))
            e, _ = best_of(args.repeat + 1, lambda tree=tree, x=feats[:batch]: tree.assign_exact(x))
            print(
                f"| {label} | {batch} | {batch / d:,.0f} | {batch / e:,.0f} | "
                f"{'descent' if d < e else 'exact'} {max(d, e) / min(d, e):.1f}x |"
            )


if __name__ == "__main__":
    main()
