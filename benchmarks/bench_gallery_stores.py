"""The two gallery stores side by side: SQLite file vs PostgreSQL server, at each gallery size, in one run.

For each size N (random unit 128-D faces, 10 per person), both stores are filled through
``Gallery.enroll_many`` (1,000 people per transaction), then timed on what a replica does:

* start-up: a new process opens the gallery and loads every face (``Store.changes(None)``: SQLite
  rows, PostgreSQL binary COPY; for PostgreSQL also the naive row-by-row fetch, for comparison), then
  builds its FAISS index (the same code for both stores);
* identify: single queries (noisy copies of enrolled faces) through ``Gallery.identify`` (each one
  first asks the store's change feed whether anything changed — timed alone as "feed check"), p50 / p99;
* enrolment: one person with one face per transaction, the index loaded and kept up to date, per
  second and p50.

PostgreSQL is a throwaway cluster started here (durable settings: fsync, synchronous_commit and
full_page_writes on, as SQLite's synchronous=FULL) on a loopback port, or ``--url`` for your own.

    .venv/bin/python benchmarks/bench_gallery_stores.py --sizes 100000,1000000 --index exact
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from facenet.gallery import Gallery, Record
from facenet.gallery.store import SQLStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pgcluster  # noqa: E402
from machine import cpu_name  # noqa: E402  (bench_replicas, bench_serve_startup import it from here)

D = 128
FACES_PER_PERSON = 10
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "shared_buffers": "512MB"}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(location: str, n: int, seed: int) -> tuple[float, np.ndarray]:
    """Enrol n faces; returns (seconds, the vectors)."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    with Gallery.open(location, "bench", D) as g:
        t0 = time.perf_counter()
        chunk = 1000 * FACES_PER_PERSON
        for start in range(0, n, chunk):
            x = vectors[start : start + chunk]
            g.enroll_many(
                Record(
                    f"p{(start + i) // FACES_PER_PERSON}",
                    x[i : i + FACES_PER_PERSON],
                    [""] * len(x[i : i + FACES_PER_PERSON]),
                )
                for i in range(0, len(x), FACES_PER_PERSON)
            )
        return time.perf_counter() - t0, vectors


def measure(location: str, vectors: np.ndarray, args, rng) -> dict[str, float]:
    out = {}
    with Gallery.open(location, "bench", D, index=args.index) as g:

        def fetch_all():
            assert len(g.store.changes(None).ids) == len(vectors)

        def fetch_rows():  # what the PostgreSQL store would do without COPY: the shared row-by-row SQL
            with g.store._read() as cur:
                head = cur.execute("SELECT head FROM feed").fetchone()[0]
                assert len(SQLStore._fetch_faces(g.store, cur, "f.seq <= ?", (head,))[0]) == len(vectors)

        ways = {"load: fetch all faces, best of 3 (s)": fetch_all}
        if location.startswith("postgresql://"):
            ways["load: fetch row by row, no COPY, best of 3 (s)"] = fetch_rows
        for _ in range(3):  # alternate, so that both see the same caches
            for name, way in ways.items():
                t0 = time.perf_counter()
                way()
                out[name] = min(out.get(name, np.inf), time.perf_counter() - t0)
        t0 = time.perf_counter()
        g.sync()
        out["start-up: fetch + index build (s)"] = time.perf_counter() - t0
        out["index"] = g._index.kind
        times = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            g.sync()
            times.append(time.perf_counter() - t0)
        out["feed check, nothing new (ms)"] = float(np.percentile(np.array(times) * 1e3, 50))

        picks = rng.integers(0, len(vectors), args.queries)
        near = vectors[picks] + 0.06 * rng.standard_normal((args.queries, D), dtype=np.float32)
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        times, hits = [], 0
        for q, pick in zip(near, picks):
            t0 = time.perf_counter()
            match = g.identify(q, k=5)[0]
            times.append(time.perf_counter() - t0)
            hits += match[0].name == f"p{pick // FACES_PER_PERSON}"
        ms = np.array(times) * 1e3
        out["identify p50 (ms)"], out["identify p99 (ms)"] = np.percentile(ms, 50), np.percentile(ms, 99)
        out["identify recall@1"] = hits / args.queries

        new = unit(rng, args.enrolments)
        times = []
        for i, v in enumerate(new):
            t0 = time.perf_counter()
            g.enroll(f"new{i}", v[None], ["bench"])
            times.append(time.perf_counter() - t0)
        out["enrol: people/s (1 face each)"] = len(times) / sum(times)
        out["enrol p50 (ms)"] = float(np.percentile(np.array(times) * 1e3, 50))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="gallery sizes in faces, comma-separated")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--enrolments", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--index",
        default="auto",
        choices=("auto", "exact", "hnsw", "ivf"),
        help="FAISS index of the replicas (the same for both stores; HNSW builds take minutes at 1M)",
    )
    ap.add_argument("--url", help="an empty PostgreSQL database to use (default: start a throwaway cluster)")
    ap.add_argument("--dir", help="where to put the SQLite files and the cluster (default: a temporary folder)")
    args = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped early: still stop the cluster, delete the files
        signal.signal(sig, lambda *_: sys.exit(f"{Path(__file__).name}: stopped"))
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# CPU: {cpu_name()}; {args.threads} threads; index {args.index}; "
        f"load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    cluster = None if args.url else pgcluster.Cluster(DURABLE).start()
    results: dict[int, dict[str, dict]] = {}
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, threadpool_limits(args.threads):
            for n in sizes:
                results[n] = {}
                for store in ("sqlite", "postgresql"):
                    location = (
                        str(Path(tmp) / f"g{n}.db")
                        if store == "sqlite"
                        else (args.url if args.url else cluster.create_database())
                    )
                    seconds, vectors = fill(location, n, seed=n)
                    print(f"{store}: filled {n:,} faces in {seconds:.1f} s ({n / seconds:,.0f} faces/s)", flush=True)
                    row = {"fill: faces/s (1,000 people per txn)": n / seconds}
                    row.update(measure(location, vectors, args, np.random.default_rng(1)))
                    results[n][store] = row
                    print(
                        f"{store} {n:,}: "
                        + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                        flush=True,
                    )
                    if args.url:
                        print("(--url: one size only, the database is not emptied)")
                        break
    finally:
        if cluster:
            cluster.stop()
    print(f"\n# load average after: {os.getloadavg()[0]:.2f}")
    print("| faces | metric | SQLite | PostgreSQL | PostgreSQL / SQLite |")
    print("|---|---|---|---|---|")
    for n, by_store in results.items():
        for metric in by_store.get("postgresql", by_store["sqlite"]):
            a, b = by_store["sqlite"].get(metric), by_store.get("postgresql", {}).get(metric)
            cell = lambda v: "-" if v is None else (f"{v:,.3g}" if isinstance(v, float) else str(v))  # noqa: E731
            ratio = f"{b / a:.2f}" if isinstance(a, float) and isinstance(b, float) and a else "-"
            print(f"| {n:,} | {metric} | {cell(a)} | {cell(b)} | {ratio} |")


if __name__ == "__main__":
    main()
