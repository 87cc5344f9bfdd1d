"""Clustering that scales (issue 25, item 3): quality on labelled faces, time and peak memory at 10^5-10^6 faces.

Quality: LFW's 13,233 photos and the LFW-free labelled sources (pubfig83, glint, celeba, yale; each
clustered on its own), embedded by the default model (cached ``.npz`` files with ``paths`` and
``embeddings``, person = parent folder); ``facenet.cluster.clustering_scores`` (pairwise P/R/F, BCubed F, NMI)
for today's agglomerative (average linkage at the model's verification threshold: the CLI's old default),
agglomerative at the graph's threshold, and the graph method (Leiden, connected components) at its
calibrated threshold (the FAR-table distance at per-pair FAR 1e-6).

Scale: SYNTHETIC embeddings (no real faces): ``--people`` per 10 faces, sizes log-normal (heavy-tailed like
LFW), each person a random unit centre in a ``--rank``-dimensional subspace, each face the centre plus
Gaussian noise of a per-person scale, fitted so that same-person squared distances match LFW's genuine
distribution (quantiles printed side by side, with the stranger distribution, which matches less well).
Written as ``facenet embed``-style ``.npy`` shards (+ ``.rows.csv``) and clustered by the CLI itself,
``facenet cluster --embeddings SHARDS --out DIR --no-sheets``, in a child process: wall time and the
child's peak RSS (``wait4``). Contact sheets are timed separately (``--sheets-at``).

    python benchmarks/bench_cluster_scale.py --lfw /tmp/openset/lfw.reid.npz \\
        --free /tmp/openset/aligned.reid.npz --sizes 100000 1000000 --work /tmp/cluster_scale
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
from machine import cpu_name

from facenet.cluster import assign_incremental, cluster_embeddings, clustering_scores, graph_threshold
from facenet.models.pretrained import REID

DIM = 256


def genuine_impostor(emb: np.ndarray, labels: np.ndarray, pairs: int = 400_000, seed: int = 0):
    """Squared distances of (sampled) same-person pairs and of random different-person pairs."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    multi = counts > 1
    weights = (counts[multi] * (counts[multi] - 1)).astype(np.float64)
    group = rng.choice(np.flatnonzero(multi), pairs, p=weights / weights.sum())
    a = rng.integers(0, counts[group])
    b = (a + 1 + rng.integers(0, counts[group] - 1)) % counts[group]
    i, j = order[starts[group] + a], order[starts[group] + b]
    genuine = ((emb[i] - emb[j]) ** 2).sum(1)
    i, j = rng.integers(0, len(emb), pairs), rng.integers(0, len(emb), pairs)
    keep = labels[i] != labels[j]
    impostor = ((emb[i[keep]] - emb[j[keep]]) ** 2).sum(1)
    return genuine, impostor


def person_sizes(n: int, people: int, rng) -> np.ndarray:
    sizes = np.maximum(1, np.round(rng.lognormal(0.0, 1.0, people) * n / people / np.exp(0.5))).astype(np.int64)
    while sizes.sum() != n:  # nudge to exactly n faces
        diff = n - sizes.sum()
        pick = rng.integers(0, people, abs(diff))
        np.add.at(sizes, pick, np.sign(diff))
        sizes = np.maximum(sizes, 1)
    return sizes


def synthetic(n: int, people: int, rank: int, scale_mu: float, scale_sigma: float, seed: int = 0):
    """Generator of (embeddings, labels) blocks for ``n`` synthetic faces of ``people`` people."""
    rng = np.random.default_rng(seed)
    sizes = person_sizes(n, people, rng)
    scales = np.exp(rng.normal(np.log(scale_mu), scale_sigma, people))
    labels = np.repeat(np.arange(people), sizes)
    c = np.random.default_rng(seed + 1).standard_normal((people, rank)).astype(np.float32)
    centres = np.zeros((people, DIM), np.float32)
    centres[:, :rank] = c / np.linalg.norm(c, axis=1, keepdims=True)
    del c
    block = 100_000
    for start in range(0, n, block):
        lab = labels[start : start + block]
        noise = rng.standard_normal((len(lab), DIM)).astype(np.float32)
        x = centres[lab] + (scales[lab, None] / np.sqrt(DIM)).astype(np.float32) * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float32), lab


def fit_noise(genuine_lfw: np.ndarray, rank: int) -> tuple[float, float]:
    """Per-person noise scale (log-normal: median, sigma) whose genuine squared distances match LFW's
    10/50/90% quantiles (grid search on 20,000 synthetic faces)."""
    want = np.quantile(genuine_lfw, [0.1, 0.5, 0.9])
    best = None
    for mu in np.linspace(0.5, 0.9, 17):
        for sigma in np.linspace(0.0, 0.4, 9):
            emb, lab = next(synthetic(20_000, 2_000, rank, mu, sigma, seed=5))
            g, _ = genuine_impostor(emb, lab, 50_000)
            err = np.abs(np.quantile(g, [0.1, 0.5, 0.9]) - want).sum()
            if best is None or err < best[0]:
                best = (err, mu, sigma)
    return float(best[1]), float(best[2])


def write_shards(
    folder: Path, n: int, people: int, rank: int, mu: float, sigma: float
) -> tuple[list[Path], np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    shards, labels = [], []
    for i, (emb, lab) in enumerate(synthetic(n, people, rank, mu, sigma)):
        path = folder / f"shard{i:03d}.npy"
        np.save(path, emb)
        with path.with_suffix(".rows.csv").open("w") as fh:
            fh.write("image,face,faces,x1,y1,x2,y2,score\n")
            fh.writelines(f"synthetic/p{p}/f{i}_{j}.jpg,0,1,0,0,0,0,\n" for j, p in enumerate(lab))
        shards.append(path)
        labels.append(lab)
    return shards, np.concatenate(labels)


def run_cli(args: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system, all threads), peak RSS (GB) of ``facenet cluster ARGS`` in a
    child process, and its output. CPU seconds do not depend on what else the machine runs."""
    cmd = [sys.executable, "-m", "facenet.cli", "cluster", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"facenet cluster failed ({proc.returncode}):\n{out}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024**2, out


def quality(name: str, emb: np.ndarray, labels: np.ndarray, verification: float, graph_t: float, agglo: bool):
    rows = []
    runs = [
        ("graph leiden", "graph", graph_t, {"graph_algorithm": "leiden"}),
        ("graph components", "graph", graph_t, {"graph_algorithm": "components"}),
    ]
    if agglo:
        runs = [
            ("agglomerative (today's default)", "agglomerative", verification, {}),
            ("agglomerative at the graph threshold", "agglomerative", graph_t, {}),
        ] + runs
    for label, method, t, extra in runs:
        start = time.perf_counter()
        pred = cluster_embeddings(emb, method, threshold=t, **extra)
        seconds = time.perf_counter() - start
        s = clustering_scores(pred, labels)
        rows.append(
            {
                "set": name,
                "faces": len(emb),
                "method": label,
                "threshold": round(t, 4),
                "seconds": round(seconds, 2),
                **{k: round(v, 4) for k, v in s.items()},
            }
        )
        print(
            f"| {name} | {label} | {t:.4f} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f_measure']:.4f} | "
            f"{s['bcubed_f']:.4f} | {s['nmi']:.4f} | {seconds:.1f} |",
            flush=True,
        )
    return rows


def incremental(n: int, faces_per_person: float, rank: int, mu: float, sigma: float) -> dict:
    """Cluster ``n`` synthetic faces at once, and the first 90% then the other 10% added with
    ``assign_incremental`` (faces shuffled, so the new ones are of known people and of new ones)."""
    emb = np.concatenate([e for e, _ in synthetic(n, int(n / faces_per_person), rank, mu, sigma)])
    truth = np.concatenate([t for _, t in synthetic(n, int(n / faces_per_person), rank, mu, sigma)])
    order = np.random.default_rng(3).permutation(n)
    emb, truth = emb[order], truth[order]
    threshold = graph_threshold(REID)
    old = int(0.9 * n)
    start = time.perf_counter()
    full = cluster_embeddings(emb, "graph", threshold)
    t_full = time.perf_counter() - start
    start = time.perf_counter()
    first = cluster_embeddings(emb[:old], "graph", threshold)
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    kept, new = assign_incremental(emb[:old], first, emb[old:], threshold)
    t_add = time.perf_counter() - start
    both = np.concatenate([kept, new])
    s_full, s_inc = clustering_scores(full, truth), clustering_scores(both, truth)
    print(
        f"\nincremental ({n:,} synthetic faces): all at once {t_full:.0f} s, pairwise F {s_full['f_measure']:.4f}, "
        f"BCubed F {s_full['bcubed_f']:.4f}; first 90% {t_first:.0f} s, then the last {n - old:,} added in "
        f"{t_add:.0f} s: pairwise F {s_inc['f_measure']:.4f}, BCubed F {s_inc['bcubed_f']:.4f} "
        f"(old labels unchanged: {bool((kept[first >= 0] == first[first >= 0]).all())})"
    )
    return {
        "faces": n,
        "all_at_once_s": round(t_full, 1),
        "first_90_s": round(t_first, 1),
        "add_10_s": round(t_add, 1),
        "all_at_once": {k: round(v, 4) for k, v in s_full.items()},
        "incremental": {k: round(v, 4) for k, v in s_inc.items()},
    }


def load(path: Path, sources=None):
    z = np.load(path)
    paths = [str(p) for p in z["paths"]]
    emb = z["embeddings"].astype(np.float32)
    labels = np.array([Path(p).parent.name for p in paths])
    if sources is None:
        return {"lfw": (emb, labels)}
    source = np.array([Path(p).parent.parent.name for p in paths])
    return {s: (emb[source == s], labels[source == s]) for s in sources}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, help="LFW embeddings (.npz: paths, embeddings) by the default model")
    ap.add_argument("--free", type=Path, help="LFW-free labelled sources' embeddings (.npz), as --lfw")
    ap.add_argument("--sources", default="pubfig83,glint,celeba,yale")
    ap.add_argument("--no-agglomerative", action="store_true", help="skip the O(n^2) agglomerative rows")
    ap.add_argument("--sizes", type=int, nargs="*", default=[], help="synthetic sizes to time (faces)")
    ap.add_argument("--faces-per-person", type=float, default=10.0)
    ap.add_argument("--rank", type=int, default=54, help="synthetic centres' subspace (stranger spread)")
    ap.add_argument("--sheets-at", type=int, default=0, help="also time contact sheets at this synthetic size")
    ap.add_argument(
        "--incremental-at", type=int, default=0, help="also time adding 10%% new faces to this many (synthetic)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/cluster_scale"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = REID  # the default model's calibration (facenet.models.pretrained)
    verification, graph_t = info.threshold, graph_threshold(info)
    load_average = os.getloadavg()[0]  # others' work on the machine: wall times stretch, CPU seconds do not
    result: dict = {
        "load_average_at_start": load_average,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "verification_threshold": verification,
        "graph_threshold": graph_t,
        "quality": [],
        "scale": [],
    }
    print(
        f"CPU: {result['cpu']} ({os.cpu_count()} cores visible); model {info.name}: verification threshold "
        f"{verification}, graph threshold {graph_t:.4f} (FAR-table distance at per-pair FAR 1e-6); "
        f"load average {load_average:.1f}"
    )
    lfw = load(args.lfw) if args.lfw else {}
    if lfw or args.free:
        print("\n| set | method | threshold | pairwise P | pairwise R | pairwise F | BCubed F | NMI | seconds |")
        print("|---|---|---|---|---|---|---|---|---|")
    for name, (emb, labels) in lfw.items():
        result["quality"] += quality(name, emb, labels, verification, graph_t, not args.no_agglomerative)
    if args.free:
        for name, (emb, labels) in load(args.free, args.sources.split(",")).items():
            result["quality"] += quality(name, emb, labels, verification, graph_t, not args.no_agglomerative)

    if args.sizes or args.sheets_at or args.incremental_at:
        if not lfw:
            raise SystemExit("--sizes needs --lfw (the genuine distances the synthetic faces are fitted to)")
        lfw_g, lfw_i = genuine_impostor(*lfw["lfw"])
        mu, sigma = fit_noise(lfw_g, args.rank)
        emb, lab = next(synthetic(100_000, 10_000, args.rank, mu, sigma, seed=9))
        syn_g, syn_i = genuine_impostor(emb, lab)
        qs = [1e-4, 0.01, 0.1, 0.5, 0.9, 0.99]
        print(
            f"\nSynthetic faces: per-person noise log-normal (median {mu:.3f}, sigma {sigma:.2f}), centres in a "
            f"{args.rank}-D subspace. Squared-distance quantiles, LFW vs synthetic:"
        )
        print("| pairs | " + " | ".join(f"q{q:g}" for q in qs) + " |\n|---|" + "---|" * len(qs))
        for name, values in [
            ("LFW genuine", lfw_g),
            ("synthetic genuine", syn_g),
            ("LFW strangers", lfw_i),
            ("synthetic strangers", syn_i),
        ]:
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.quantile(values, qs)) + " |")
        result["synthetic"] = {
            "noise_median": mu,
            "noise_sigma": sigma,
            "rank": args.rank,
            "quantiles": qs,
            **{
                k: np.quantile(v, qs).round(4).tolist()
                for k, v in [
                    ("lfw_genuine", lfw_g),
                    ("synthetic_genuine", syn_g),
                    ("lfw_strangers", lfw_i),
                    ("synthetic_strangers", syn_i),
                ]
            },
        }
        del emb, lab
        print(
            "\n| faces (synthetic) | people | write shards s | `facenet cluster` wall s | CPU s (user+sys) | "
            "peak RSS GB | clusters | pairwise F | BCubed F | NMI |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        for n in args.sizes:
            people = int(n / args.faces_per_person)
            folder = args.work / f"n{n}"
            start = time.perf_counter()
            shards, truth = write_shards(folder / "shards", n, people, args.rank, mu, sigma)
            written = time.perf_counter() - start
            seconds, cpu, rss, out = run_cli(
                ["--embeddings", *map(str, shards), "--out", str(folder / "out"), "--no-sheets"]
            )
            pred = np.load(folder / "out" / "embeddings.npz")["labels"]
            s = clustering_scores(pred, truth)
            clusters = int(pred.max() + 1)
            print(
                f"| {n:,} | {people:,} | {written:.0f} | {seconds:.0f} | {cpu:.0f} | {rss:.2f} | {clusters:,} | "
                f"{s['f_measure']:.4f} | {s['bcubed_f']:.4f} | {s['nmi']:.4f} |",
                flush=True,
            )
            result["scale"].append(
                {
                    "faces": n,
                    "people": people,
                    "seconds": round(seconds, 1),
                    "cpu_seconds": round(cpu, 1),
                    "peak_rss_gb": round(rss, 3),
                    "clusters": clusters,
                    **{k: round(v, 4) for k, v in s.items()},
                    "cli_output": out.strip().splitlines()[-1],
                }
            )
        if args.sheets_at:
            n = args.sheets_at
            folder = args.work / f"sheets{n}"
            shards, _ = write_shards(folder / "shards", n, int(n / args.faces_per_person), args.rank, mu, sigma)
            seconds, cpu, rss, _ = run_cli(["--embeddings", *map(str, shards), "--out", str(folder / "out")])
            sheets = sum(1 for p in (folder / "out").iterdir() if p.suffix == ".png")
            print(
                f"\nwith contact sheets ({n:,} synthetic faces, photos absent: grey tiles): {seconds:.0f} s wall, "
                f"{cpu:.0f} s CPU, "
                f"peak RSS {rss:.2f} GB, {sheets:,} sheets"
            )
            result["sheets"] = {
                "faces": n,
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "peak_rss_gb": round(rss, 3),
                "sheets": sheets,
            }
        if args.incremental_at:
            result["incremental"] = incremental(args.incremental_at, args.faces_per_person, args.rank, mu, sigma)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
