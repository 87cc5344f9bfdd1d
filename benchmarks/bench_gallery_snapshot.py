"""Gallery index snapshots and off-path index builds (issue 25, item 4).

1. Time to ready of a replica of an N-face gallery (default 1,000,000 random unit 128-D faces, 10 per
   person, SQLite): each replica is a fresh process that opens the gallery and syncs, (a) rebuilding the
   index from the store (no snapshot), (b) from the snapshot the first one wrote, (c) from that snapshot
   plus a catch-up of ``--catch-up`` faces enrolled after it. Each replica then times single queries
   (noisy copies of enrolled faces) through the index and ``Gallery.identify`` (k=5): p50/p99, and recall@1
   against exact brute-force search over the same vectors (computed once, in NumPy, by the parent). Memory
   per replica: its resident set once ready (and its peak), from /proc.
2. The enrolment that crosses the exact -> HNSW switch (``AUTO_THRESHOLD``): each enrolment's time
   (enrol + sync + one identify, what the service does) around it, and when the background build ended.
3. Enrolment cost at 100 vs 100,000 people: median time of enrolling one more person (5 faces) and
   looking them up (``Gallery.person``), index sync included (median, p90, p99, mean: with HNSW the new
   faces are folded into the graph in the background every ``FRESH_FOLD_AT`` faces, which the tail shows),
   and the old way of finding them (listing everyone) for comparison.

    .venv/bin/python benchmarks/bench_gallery_snapshot.py --n 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D = 128
SEED = 0


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mib() -> tuple[float, float]:
    """(resident now, peak resident) of this process, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def percentiles(times) -> tuple[float, float]:
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# -- one replica (a child process) ---------------------------------------------------------------------


def replica(args) -> None:
    import faiss

    from facenet.gallery import Gallery

    faiss.omp_set_num_threads(args.threads)
    truth = np.load(args.truth)
    queries, face_truth, person_truth = truth["queries"], truth["faces"], truth["people"]
    w0, c0 = time.perf_counter(), cpu_s()
    g = Gallery.open(args.gallery, "bench", D, create=False)
    g.snapshots = args.mode != "rebuild"
    g.sync()
    ready_s, ready_cpu = time.perf_counter() - w0, cpu_s() - c0
    rss, peak = rss_mib()
    out = {
        "mode": args.mode,
        "ready_s": ready_s,
        "ready_cpu_s": ready_cpu,
        "rss_mib": rss,
        "peak_mib": peak,
        "kind": g._index.kind,
        "faces": len(g._index),
    }
    hits, times = 0, []
    for q, t_id in zip(queries, face_truth):
        t = time.perf_counter()
        _, ids = g._index.search(q[None], 1)
        times.append(time.perf_counter() - t)
        hits += int(ids[0, 0] == t_id)
    out["search_p50_ms"], out["search_p99_ms"] = percentiles(times)
    out["search_recall1"] = hits / len(queries)
    hits, times = 0, []
    for q, person in zip(queries, person_truth):
        t = time.perf_counter()
        (matches,) = g.identify(q[None], k=5)
        times.append(time.perf_counter() - t)
        hits += int(bool(matches) and matches[0].name == f"p{person}")
    out["identify_p50_ms"], out["identify_p99_ms"] = percentiles(times)
    out["identify_recall1"] = hits / len(queries)
    if args.mode == "rebuild":  # the snapshot the next replicas start from
        g.snapshots = True
        w0, c0 = time.perf_counter(), cpu_s()
        path, snap, size = g.write_snapshot()
        out["write_s"], out["write_cpu_s"], out["snapshot_mib"] = time.perf_counter() - w0, cpu_s() - c0, size / 2**20
    g.close()
    print("RESULT " + json.dumps(out), flush=True)


def run_replica(common: list[str], mode: str) -> dict:
    cmd = [sys.executable, __file__, "--replica", mode, *common]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"replica {mode} failed")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# -- the parent -----------------------------------------------------------------------------------------


def build_gallery(path: Path, n: int, per_person: int = 10, start_person: int = 0, rng=None, name="p"):
    """``n`` faces, ``per_person`` each, written to the store in chunks (no index: the replicas build theirs)."""
    from facenet.gallery import Gallery, Record

    rng = rng or np.random.default_rng(SEED)
    vectors = np.empty((n, D), np.float32)
    with Gallery.open(path, "bench", D, policy="nearest") as g:  # random faces: a person is their nearest face
        g.snapshots = False
        chunk = 100_000
        for s in range(0, n, chunk):
            x = unit(rng, min(chunk, n - s))
            vectors[s : s + len(x)] = x
            g.enroll_many(
                Record(
                    f"{name}{start_person + (s + i) // per_person}",
                    x[i : i + per_person],
                    [""] * len(x[i : i + per_person]),
                )
                for i in range(0, len(x), per_person)
            )
    return vectors


def readiness(args) -> list[dict]:
    from facenet.gallery import Gallery, Record

    tmp = Path(args.dir)
    path = tmp / "bench.db"
    w0 = time.perf_counter()
    vectors = build_gallery(path, args.n)
    print(f"# wrote {args.n:,} faces to {path} in {time.perf_counter() - w0:.0f} s", flush=True)
    rng = np.random.default_rng(SEED + 1)
    picked = rng.integers(0, args.n, args.queries)
    near = vectors[picked] + 0.06 * rng.standard_normal((args.queries, D), dtype=np.float32)
    queries = near / np.linalg.norm(near, axis=1, keepdims=True)
    norms = (vectors**2).sum(1)
    nearest = np.concatenate(
        [np.argmin(norms - 2 * (queries[i : i + 50] @ vectors.T), axis=1) for i in range(0, len(queries), 50)]
    )
    del vectors, norms
    np.savez(tmp / "truth.npz", queries=queries, faces=nearest + 1, people=nearest // 10)  # AUTOINCREMENT ids from 1
    common = ["--gallery", str(path), "--truth", str(tmp / "truth.npz"), "--threads", str(args.threads)]
    rows = [run_replica(common, "rebuild")]
    print("# " + json.dumps(rows[-1]), flush=True)
    rows.append(run_replica(common, "snapshot"))
    print("# " + json.dumps(rows[-1]), flush=True)
    if args.catch_up:
        with Gallery.open(path, "bench", D) as g:
            g.snapshots = False
            x = unit(rng, args.catch_up)
            g.enroll_many(Record(f"late{i // 10}", x[i : i + 10], [""] * 10) for i in range(0, len(x), 10))
        row = run_replica(common, "snapshot")
        row["mode"] = f"snapshot + {args.catch_up:,} new faces"
        rows.append(row)
        print("# " + json.dumps(rows[-1]), flush=True)
    return rows


def crossing(args) -> dict:
    """Enrolments around the exact -> HNSW switch, in one serving-like process."""
    from facenet.gallery import Gallery
    from facenet.gallery.index import AUTO_THRESHOLD

    path = Path(args.dir) / "crossing.db"
    rng = np.random.default_rng(SEED + 2)
    before = AUTO_THRESHOLD - 10 * 5
    build_gallery(path, before, per_person=10, rng=rng)
    times, kinds = [], []
    with Gallery.open(path, "bench", D) as g:
        g.snapshots = False
        g.sync()
        for i in range(20):
            q = unit(rng, 10)
            t = time.perf_counter()
            g.enroll(f"new{i}", q)
            g.sync()
            g.identify(q[:1], k=5)
            times.append(time.perf_counter() - t)
            kinds.append(f"{g._index.kind}{'+building' if g._index.building else ''}")
        t = time.perf_counter()
        g._index.wait_for_build()
        waited = time.perf_counter() - t
        crossed = next(i for i, k in enumerate(kinds) if "building" in k or k == "hnsw")
    return {
        "times_ms": [round(x * 1e3, 1) for x in times],
        "kinds": kinds,
        "crossed_at": crossed,
        "build_left_s": waited,
        "faces_before": before,
    }


def searches_while_folding(index, rng: np.random.Generator) -> dict:
    """Single searches (k=5) through an HNSW index while it folds 1,000 new faces into its graph, then as
    many once it is done: what a fold costs the queries that meet it (each waits for at most one slice)."""
    index.wait_for_build()
    first = 10**9
    index.add(np.arange(first, first + 1_000), unit(rng, 1_000))  # past FRESH_FOLD_AT: a fold starts
    during, after = [], []
    while index.building or index._folder is not None:
        q = unit(rng, 1)
        t = time.perf_counter()
        index.search(q, 5)
        during.append(time.perf_counter() - t)
    for _ in range(max(len(during), 200)):
        q = unit(rng, 1)
        t = time.perf_counter()
        index.search(q, 5)
        after.append(time.perf_counter() - t)
    ms = {k: np.array(v) * 1e3 for k, v in (("during", during), ("after", after))}
    return {
        f"search_{k}_{stat}_ms": float(f(v))
        for k, v in ms.items()
        for stat, f in (("p50", np.median), ("p99", lambda x: np.percentile(x, 99)), ("max", np.max))
    } | {"searches_during_fold": len(during)}


def enrol_cost(args) -> list[dict]:
    """Both galleries open side by side, enrolments interleaved (the same load for both), after a warm-up
    (the first enrolments after a bulk load checkpoint its log)."""
    from facenet.gallery import Gallery

    galleries, rows = {}, []
    for people in (100, 100_000):
        path = Path(args.dir) / f"people{people}.db"
        build_gallery(path, people, per_person=1, rng=np.random.default_rng(SEED + 3))
        g = Gallery.open(path, "bench", D, index=args.enrol_index)
        g.snapshots = False
        g.sync()
        galleries[people] = g
    rng = np.random.default_rng(SEED + 4)
    new = {p: [] for p in galleries}
    old = {p: [] for p in galleries}
    for i in range(30 + args.enrolments):
        for people, g in galleries.items():
            x = unit(rng, 5)
            t = time.perf_counter()
            g.enroll(f"e{i}", x)  # enrol + Gallery.person lookup
            g.sync()
            if i >= 30:
                new[people].append(time.perf_counter() - t)
    waiting = {people: g._index._built.fresh.ntotal for people, g in galleries.items()}  # not yet folded
    for i in range(20):  # apart: its slow listing would give a background fold time to finish unseen
        for people, g in galleries.items():
            t = time.perf_counter()
            next(p for p in g.people() if p.name == f"e{i}")  # what enrolment did before
            old[people].append(time.perf_counter() - t)
    searches = searches_while_folding(galleries[100_000]._index, rng)
    for people, g in galleries.items():
        rows.append(
            {
                "people": people,
                "kind": g._index.kind,
                "enrol_ms": float(np.median(new[people])) * 1e3,
                "enrol_p90_ms": float(np.percentile(new[people], 90)) * 1e3,
                "enrol_p99_ms": float(np.percentile(new[people], 99)) * 1e3,
                "enrol_mean_ms": float(np.mean(new[people])) * 1e3,
                "listing_ms": float(np.median(old[people])) * 1e3,
                "waiting_to_fold": waiting[people],  # after the last enrolment
                **(searches if people == 100_000 else {}),
            }
        )
        g.close()
        print("# " + json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="faces in the gallery of the readiness test")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--catch-up", type=int, default=10_000, help="faces enrolled after the snapshot (0: skip)")
    ap.add_argument(
        "--enrolments",
        type=int,
        default=300,
        help="timed enrolments per gallery size (300: HNSW folds its new faces 5 times)",
    )
    ap.add_argument("--enrol-index", default="auto", help="index kind of the enrolment-cost galleries")
    ap.add_argument("--only", choices=("ready", "crossing", "enrol"), help="run one part")
    ap.add_argument("--dir", help="where to put the gallery files (default: a temporary folder)")
    ap.add_argument("--replica", help=argparse.SUPPRESS)
    ap.add_argument("--gallery", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replica:
        args.mode = args.replica
        return replica(args)
    import faiss
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import cpu_name

    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, threadpool_limits(args.threads):
        args.dir = tmp
        ready = readiness(args) if args.only in (None, "ready") else []
        cross = crossing(args) if args.only in (None, "crossing") else None
        enrol = enrol_cost(args) if args.only in (None, "enrol") else []
    print(f"\n{cpu_name()}, {os.cpu_count()} cores visible, threads={args.threads}; d={D}, random unit faces")
    if ready:
        print(f"\nTime to ready of a replica, N={args.n:,} faces ({args.queries} noisy-copy queries; recall vs exact)")
        print(
            f"{'start':28} {'ready s':>8} {'cpu s':>7} {'RSS MiB':>8} {'peak':>7} {'index':>6} "
            f"{'search p50/p99 ms':>18} {'R@1':>6} {'identify p50/p99 ms':>20} {'R@1':>6}"
        )
        for r in ready:
            print(
                f"{r['mode']:28} {r['ready_s']:8.2f} {r['ready_cpu_s']:7.1f} {r['rss_mib']:8.0f} {r['peak_mib']:7.0f} "
                f"{r['kind']:>6} {r['search_p50_ms']:8.2f}/{r['search_p99_ms']:<9.2f} {r['search_recall1']:6.3f} "
                f"{r['identify_p50_ms']:9.2f}/{r['identify_p99_ms']:<10.2f} {r['identify_recall1']:6.3f}"
            )
        r = ready[0]
        print(
            f"snapshot written in {r['write_s']:.1f} s ({r['write_cpu_s']:.1f} CPU s), {r['snapshot_mib']:.0f} MiB; "
            f"ready {ready[0]['ready_s'] / ready[1]['ready_s']:.0f}x sooner from it"
        )
    if cross:
        print(f"\nEnrolments (10 faces + sync + identify) from {cross['faces_before']:,} faces across the switch:")
        for i, (t, k) in enumerate(zip(cross["times_ms"], cross["kinds"])):
            print(f"  {i:2d} {t:8.1f} ms  index {k}{'   <- crosses' if i == cross['crossed_at'] else ''}")
        print(f"  HNSW build still running after the last: {cross['build_left_s']:.1f} s more")
    if enrol:
        print("\nEnrolment of one more person (5 faces; enrol + Gallery.person + sync), median")
        heads = ("enrol ms", "p90 ms", "p99 ms", "mean ms")
        print(f"{'people':>8} {'index':>6} " + " ".join(f"{h:>8}" for h in heads) + f" {'old: list everyone ms':>22}")
        for r in enrol:
            times = (r["enrol_ms"], r["enrol_p90_ms"], r["enrol_p99_ms"], r["enrol_mean_ms"])
            cells = " ".join(f"{t:8.2f}" for t in times)
            print(f"{r['people']:8,} {r['kind']:>6} {cells} {r['listing_ms']:22.2f}")
        print(
            f"ratio 100,000 / 100 people: {enrol[1]['enrol_ms'] / enrol[0]['enrol_ms']:.2f}x (median), "
            f"{enrol[1]['enrol_mean_ms'] / enrol[0]['enrol_mean_ms']:.2f}x (mean); new faces not yet folded into "
            f"the HNSW graph after the last enrolment: {enrol[1]['waiting_to_fold']}"
        )
        r = enrol[1]
        print(
            f"searches (k=5) at 100,000 faces while 1,000 new ones are folded in ({r['searches_during_fold']} "
            f"searches): p50 {r['search_during_p50_ms']:.2f} ms, p99 {r['search_during_p99_ms']:.2f} ms, max "
            f"{r['search_during_max_ms']:.2f} ms; after: p50 {r['search_after_p50_ms']:.2f} ms, p99 "
            f"{r['search_after_p99_ms']:.2f} ms, max {r['search_after_max_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()
