"""HNSW search after removals: the ID selector (now) against over-fetching ``k + removed`` (before).

A gallery index of ``--n`` random unit faces with ``--removed`` of them removed (below the rebuild
point). Both ways search the same FAISS graph; "before" asks for k + removed neighbours and drops
the removed ones afterwards (what ``FaceIndex.search`` did), "now" lets the graph search skip them.
Also checks both return the same faces. Per-query latency, batch of one, median of ``--queries``.

    .venv/bin/python benchmarks/bench_removals.py --n 20000 --removed 4000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import faiss

    from facenet.gallery.index import FaceIndex

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--removed", type=int, default=4_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_embedding import machine_line

    rng = np.random.default_rng(0)
    faces = rng.standard_normal((args.n, 128)).astype(np.float32)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    index = FaceIndex(128, "hnsw")
    index.rebuild(np.arange(args.n), faces)
    index.remove(range(args.removed))
    queries = faces[args.removed :][rng.choice(args.n - args.removed, args.queries, replace=False)]
    queries = queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    removed = np.arange(args.removed)

    def before(q):
        dist, ids = index._index.search(q, args.k + args.removed)
        keep = ~np.isin(ids, removed)
        return ids[keep][: args.k]

    def now(q):
        return index.search(q, args.k)[1][0]

    rows = []
    for name, run in (("before: over-fetch k + removed", before), ("now: ID selector", now)):
        times, answers = [], []
        for q in queries:
            start = time.perf_counter()
            answers.append(run(q[None]))
            times.append(time.perf_counter() - start)
        rows.append((name, 1000 * np.median(times), answers))
    same = np.mean([np.array_equal(a, b) for a, b in zip(rows[0][2], rows[1][2])])
    print(machine_line(1))
    print(f"HNSW, {args.n} faces, {args.removed} removed, k={args.k}, {args.queries} queries")
    print(f"{'search':34s} {'p50 ms':>7s} {'x before':>8s}")
    for name, ms, _ in rows:
        print(f"{name:34s} {ms:7.3f} {rows[0][1] / ms:8.2f}")
    print(f"same top-{args.k} faces in {100 * same:.1f}% of queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
