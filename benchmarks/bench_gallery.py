"""Gallery at scale: enrolment time, query latency p50/p99 and recall@1, vs brute-force NumPy.

N random unit 128-D faces (10 per person) are enrolled through ``Gallery.enroll_many`` (SQLite +
incremental index), then single queries are timed through the index (face level) and through
``Gallery.identify`` (person level, what a user calls). Ground truth and the peer timing are
exact brute force in NumPy over the same vectors, in the same run.

Random unit vectors in 128-D have no structure, the worst case for approximate search; the
"near" queries (a noisy copy of an enrolled face) are the realistic case of a known person.

    .venv/bin/python benchmarks/bench_gallery.py --n 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from facenet.gallery import Gallery, Record

D = 128


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="faces in the gallery")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", default="auto", choices=("auto", "exact", "hnsw", "ivf"))
    ap.add_argument("--ef", default="64,128,256,512", help="HNSW efSearch values to sweep")
    ap.add_argument("--storage", default="float32", choices=("float32", "int8"))
    ap.add_argument("--reopen", action="store_true", help="also time opening the file and rebuilding the index")
    ap.add_argument("--dir", help="where to put the gallery file (default: a temporary folder)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, threadpool_limits(args.threads):
        path = Path(tmp) / "bench.db"
        vectors = np.empty((args.n, D), np.float32)
        g = Gallery.open(path, "bench", D, storage=args.storage, index=args.index)
        g.sync()  # build the (empty) index now; enrolment then grows it chunk by chunk
        t0 = time.perf_counter()
        chunk = 10_000
        for start in range(0, args.n, chunk):
            x = unit(rng, min(chunk, args.n - start))
            vectors[start : start + len(x)] = x
            g.enroll_many(
                Record(f"p{(start + i) // 10}", x[i : i + 10], [""] * len(x[i : i + 10])) for i in range(0, len(x), 10)
            )
            g.sync()  # the index catches up with each chunk, as a serving process would
        enrol_s = time.perf_counter() - t0
        print(
            f"enrolled {args.n:,} faces in {enrol_s:.1f} s ({args.n / enrol_s:,.0f} faces/s), "
            f"index {g._index.kind}, file {path.stat().st_size / 2**20:.0f} MiB",
            flush=True,
        )
        if args.reopen:
            t0 = time.perf_counter()
            with Gallery.open(path, "bench", D, index=args.index) as reopened:
                reopened.identify(unit(rng, 1))
            print(f"reopen + index build from the file: {time.perf_counter() - t0:.1f} s", flush=True)

        face_ids = np.arange(1, args.n + 1)  # AUTOINCREMENT ids in enrolment order
        sets = {"random": unit(rng, args.queries)}
        near = vectors[rng.integers(0, args.n, args.queries)] + 0.06 * rng.standard_normal(
            (args.queries, D), dtype=np.float32
        )
        sets["near"] = near / np.linalg.norm(near, axis=1, keepdims=True)
        norms = (vectors**2).sum(1)
        rows = []
        for qname, queries in sets.items():
            truth, brute_t = [], []
            for q in queries:
                t = time.perf_counter()
                truth.append(int(np.argmin(norms - 2 * vectors @ q)))
                brute_t.append(time.perf_counter() - t)
            truth = face_ids[truth]
            b50, b99 = percentiles(brute_t)
            rows.append((qname, "numpy brute force", "-", b50, b99, 1.0, 1.0))
            efs = [int(e) for e in args.ef.split(",")] if g._index.kind == "hnsw" else [0]
            for ef in efs:
                g._index.set_ef_search(ef)
                hits, times = 0, []
                for q, true_id in zip(queries, truth):
                    t = time.perf_counter()
                    _, ids = g._index.search(q[None], 1)
                    times.append(time.perf_counter() - t)
                    hits += int(ids[0, 0] == true_id)
                p50, p99 = percentiles(times)
                rows.append((qname, f"index {g._index.kind}", ef or "-", p50, p99, hits / len(queries), b50 / p50))
                times = []
                for q in queries[:200]:
                    t = time.perf_counter()
                    g.identify(q[None], k=5)
                    times.append(time.perf_counter() - t)
                p50, p99 = percentiles(times)
                rows.append((qname, "Gallery.identify k=5", ef or "-", p50, p99, float("nan"), b50 / p50))
        g.close()
    print(f"\nN={args.n:,}  d={D}  threads={args.threads}  storage={args.storage}  queries={args.queries}")
    print(f"{'queries':8} {'method':22} {'ef':>5} {'p50 ms':>9} {'p99 ms':>9} {'recall@1':>9} {'x numpy':>8}")
    for qname, method, ef, p50, p99, rec, ratio in rows:
        print(f"{qname:8} {method:22} {ef!s:>5} {p50:9.3f} {p99:9.3f} {rec:9.3f} {ratio:8.1f}")


if __name__ == "__main__":
    main()
