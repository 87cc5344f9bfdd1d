"""Open-set identification and clustering on LFW, for a facenet model file or the dlib baseline.

Identification: every LFW person with at least ``--min-images`` photos ("known") gets ONE photo
(their first, by file name) enrolled in a temporary ``facenet.gallery.Gallery``; the queries are
their other photos plus as many photos of "unknown" people (those with fewer photos, never
enrolled), spread evenly over them. A known query is right when its nearest person is the right one
AND within the threshold; an unknown query is right when nobody is within the threshold. Reported
at the model's own threshold and at the threshold that maximises overall accuracy on these very
queries (an oracle: optimistic, it shows what calibration leaves on the table).

Clustering: all photos of the known people, ``facenet.cluster.cluster_embeddings`` at the model's
threshold (agglomerative, average linkage; and chinese whispers), scored by pairwise F-measure and
NMI (``facenet.cluster.clustering_scores``).

    .venv/bin/python benchmarks/lfw_identification.py --model run/model.safetensors \\
        --images lfw_mtcnn160 --ext png --no-detect --cache emb.npz --json result.json
    .venv/bin/python benchmarks/lfw_identification.py --model dlib-cpp --images ../shared/data/lfw/images \\
        --limit-people 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facenet.cluster import cluster_embeddings, clustering_scores
from facenet.commands.core import add_model_options, embedder_from_args
from facenet.errors import DataError, FaceNetError
from facenet.evaluate.calibrate import identification_threshold
from facenet.evaluate.protocol import embed_paths
from facenet.fileio import atomic_write_bytes
from facenet.gallery import Gallery, Record


def split_people(images: Path, ext: str, min_images: int, limit_people: int | None, enrolled: int = 1):
    """(known {name: [paths]}, unknown query paths): deterministic, from sorted names and files.

    ``limit_people`` keeps that many known people evenly spread over the sorted names; the unknown
    queries (as many as the known queries: each known person's photos after their first ``enrolled``)
    are spread evenly over the unknown people's photos.
    """
    people = {d.name: sorted(d.glob(f"*.{ext}")) for d in sorted(images.iterdir()) if d.is_dir()}
    known = {n: p for n, p in people.items() if len(p) >= min_images}
    if not known:
        raise DataError(f"no person in {images} has {min_images} or more *.{ext} images; check --images and --ext")
    if limit_people and limit_people < len(known):
        names = sorted(known)
        known = {
            names[int(i * len(names) / limit_people)]: known[names[int(i * len(names) / limit_people)]]
            for i in range(limit_people)
        }
    pool = [p for n, paths in people.items() if 0 < len(paths) < min_images for p in paths]
    wanted = sum(len(p) - enrolled for p in known.values())
    if wanted > len(pool):
        print(f"only {len(pool)} photos of unknown people for {wanted} known queries; using them all", file=sys.stderr)
    unknown = [pool[int(i * len(pool) / wanted)] for i in range(wanted)] if wanted < len(pool) else pool
    return known, unknown


def open_set(best_person: np.ndarray, best_dist: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """Rates at one threshold; ``truth`` is the person index of known queries, -1 for unknown ones."""
    accepted = best_dist <= threshold
    is_known = truth >= 0
    known_ok = (best_person == truth) & accepted & is_known
    unknown_ok = ~accepted & ~is_known
    return {
        "threshold": float(threshold),
        "rank1_known": float(known_ok.sum() / max(1, is_known.sum())),
        "unknown_rejected": float(unknown_ok.sum() / max(1, (~is_known).sum())),
        "overall": float((known_ok.sum() + unknown_ok.sum()) / len(truth)),
    }


def best_threshold(best_person: np.ndarray, best_dist: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (an observed distance, or just below the smallest) that maximises overall open-set accuracy."""
    order = np.argsort(best_dist, kind="stable")
    d, right, unknown = best_dist[order], (best_person == truth)[order] & (truth[order] >= 0), truth[order] < 0
    # accepting the first i+1 queries (threshold d[i]): right known ones so far + unknown ones beyond i
    correct = np.cumsum(right) + (unknown.sum() - np.cumsum(unknown))
    last_of_tie = np.r_[d[1:] != d[:-1], True]  # a threshold accepts every query at that distance
    correct = np.where(last_of_tie, correct, -1)
    i = int(np.argmax(correct))
    return float(d[i]) if correct[i] > unknown.sum() else float(np.nextafter(d[0], -np.inf))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        required=True,
        help="model file, a shipped model's name (reid, dlib), or 'dlib-cpp' (dlib's own C++ pipeline, unit rows)",
    )
    ap.add_argument("--images", type=Path, required=True, help="folder with one sub-folder of photos per person")
    ap.add_argument("--ext", default="jpg", help="image file extension (default: jpg)")
    ap.add_argument("--min-images", type=int, default=5, help="photos a person needs to be 'known' (default: 5)")
    ap.add_argument("--limit-people", type=int, help="keep this many known people, evenly spread (for speed)")
    ap.add_argument("--cache", type=Path, help=".npz file keeping the embeddings (resumable, reusable)")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--far",
        type=float,
        default=1e-2,
        help="stranger false-accept rate for the open-set threshold row (default: 1e-2, identify's)",
    )
    add_model_options(ap, model_option=False)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except FaceNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.model == "dlib-cpp":
        from facenet.baselines.dlib_model import DlibEmbedder

        embedder = DlibEmbedder()
    else:
        embedder = embedder_from_args(args, which="central")  # LFW labels the middle face
    known, unknown = split_people(args.images, args.ext, args.min_images, args.limit_people)
    paths = [p for ps in known.values() for p in ps] + unknown
    start = time.perf_counter()
    emb, failed = embed_paths(embedder, paths, "none", args.batch_size, True, args.cache)
    embed_s = time.perf_counter() - start
    if failed:
        print(f"{len(failed)} images could not be embedded and are left out", file=sys.stderr)

    names = list(known)
    enrolled = [Record(n, emb[known[n][0]][None], [str(known[n][0])]) for n in names if known[n][0] in emb]
    queries = [(p, i) for i, n in enumerate(names) for p in known[n][1:] if p in emb] + [
        (p, -1) for p in unknown if p in emb
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Gallery.open(Path(tmp) / "gallery.db", embedder.name, embedder.embedding_size) as gallery,
    ):
        gallery.enroll_many(enrolled)
        start = time.perf_counter()
        matches = gallery.identify(np.stack([emb[p] for p, _ in queries]), k=1)
        search_s = time.perf_counter() - start
    index = {n: i for i, n in enumerate(names)}
    best_person = np.array([index[m[0].name] for m in matches])
    best_dist = np.array([m[0].distance for m in matches])
    truth = np.array([t for _, t in queries])
    own = open_set(best_person, best_dist, truth, embedder.threshold)
    far = None  # the open-set threshold from the model's FAR calibration (project models that have one)
    if getattr(embedder, "info", None) is not None and embedder.info.far_thresholds:
        far = open_set(best_person, best_dist, truth, identification_threshold(embedder, len(names), args.far))
    swept = open_set(best_person, best_dist, truth, best_threshold(best_person, best_dist, truth))
    closed = float((best_person == truth)[truth >= 0].mean())

    photos = [p for n in names for p in known[n] if p in emb]
    labels = [p.parent.name for p in photos]
    clusters = {}
    for method in ("agglomerative", "chinese_whispers"):
        start = time.perf_counter()
        pred = cluster_embeddings(np.stack([emb[p] for p in photos]), method, embedder.threshold)
        clusters[method] = {
            **clustering_scores(pred, labels),
            "clusters": int(pred.max() + 1),
            "unclustered": int((pred < 0).sum()),
            "seconds": round(time.perf_counter() - start, 2),
        }

    result = {
        "model": embedder.name,
        "images_dir": str(args.images),
        "min_images": args.min_images,
        "known_people": len(names),
        "known_queries": int((truth >= 0).sum()),
        "unknown_queries": int((truth < 0).sum()),
        "failed_images": len(failed),
        "embed_seconds": round(embed_s, 1),
        "search_seconds": round(search_s, 3),
        "closed_set_rank1": closed,
        "at_model_threshold": own,
        "at_far_threshold": far,
        "far": args.far,
        "at_best_threshold": swept,
        "clustering": {"photos": len(photos), "people": len(names), "threshold": embedder.threshold, **clusters},
    }
    print(table(result))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"results written to {args.json}")
    return 0


def table(r: dict) -> str:
    lines = [
        f"{r['model']} on {r['images_dir']}: {r['known_people']} known people (1 photo enrolled each), "
        f"{r['known_queries']} known + {r['unknown_queries']} unknown queries; closed-set rank-1 "
        f"{100 * r['closed_set_rank1']:.2f}%",
        "",
        f"{'threshold':<22} {'value':>7} {'rank-1 known':>12} {'unknown rejected':>16} {'overall':>8}",
    ]
    for label, key in (
        ("model's (verification)", "at_model_threshold"),
        (f"open-set, FAR {r['far']:g}", "at_far_threshold"),
        ("best (oracle sweep)", "at_best_threshold"),
    ):
        o = r[key]
        if o is None:
            continue
        lines.append(
            f"{label:<22} {o['threshold']:7.4f} {100 * o['rank1_known']:11.2f}% "
            f"{100 * o['unknown_rejected']:15.2f}% {100 * o['overall']:7.2f}%"
        )
    c = r["clustering"]
    lines += [
        "",
        f"clustering {c['photos']} photos of {c['people']} people at threshold {c['threshold']:.4f}",
        f"{'method':<18} {'clusters':>8} {'unclustered':>11} {'precision':>9} {'recall':>7} {'F':>7} {'NMI':>7}",
    ]
    for method in ("agglomerative", "chinese_whispers"):
        m = c[method]
        lines.append(
            f"{method:<18} {m['clusters']:8d} {m['unclustered']:11d} {m['precision']:9.4f} "
            f"{m['recall']:7.4f} {m['f_measure']:7.4f} {m['nmi']:7.4f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
