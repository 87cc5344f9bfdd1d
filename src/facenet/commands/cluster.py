"""`facenet cluster PHOTO_DIR --out DIR`: group photos by person (or precomputed embeddings, or new photos
joining an earlier run)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from facenet.commands.core import (
    add_batch_options,
    add_model_options,
    add_which_option,
    all_faces,
    embedder_from_args,
)
from facenet.data.images import expand_image_paths
from facenet.errors import DataError

THUMB = 96  # contact-sheet tile side in pixels
STATE = "embeddings.npz"  # what `--previous DIR` reads back: paths, embeddings, labels


def read_shards(files: list[str]) -> tuple[list[str], np.ndarray]:
    """Paths and one float32 (n, d) matrix from embedding shards: ``facenet embed --out DIR/`` directories
    (``facenet.shards.read_shards``), ``facenet embed`` ``.npy`` files (memory-mapped;
    paths from their ``.rows.csv``) or ``.npz`` files with ``embeddings`` and ``paths`` (a cluster run's
    ``embeddings.npz``). The matrix is allocated once: peak memory is the embeddings plus one shard."""
    shapes, loaders = [], []
    for name in files:
        path = Path(name)
        if path.is_dir():  # `facenet embed --out DIR/`: Parquet shards and their manifest
            from facenet.shards import read_shards as read_directory

            table = read_directory(path)
            shapes.append(table.embeddings.shape)
            loaders.append((lambda t=table: t.embeddings, lambda t=table: t.paths))
        elif path.suffix == ".npy":
            rows_csv = path.with_suffix(".rows.csv")
            if not rows_csv.is_file():
                raise DataError(f"{path}: its rows file {rows_csv} (written by `facenet embed`) is missing")
            matrix = np.load(path, mmap_mode="r")
            shapes.append(matrix.shape)
            loaders.append((lambda p=path: np.load(p, mmap_mode="r"), lambda r=rows_csv: _csv_paths(r)))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                if "embeddings" not in z or "paths" not in z:
                    raise DataError(f"{path}: an .npz shard needs 'embeddings' and 'paths' arrays")
                shapes.append(z["embeddings"].shape)
            loaders.append((lambda p=path: np.load(p)["embeddings"], lambda p=path: list(np.load(p)["paths"])))
        else:
            raise DataError(
                f"{path}: embedding shards are a `facenet embed --out DIR/` directory, .npy (from `facenet embed`) "
                "or .npz files"
            )
    dims = {s[1] for s in shapes if len(s) == 2}
    if len(dims) != 1 or any(len(s) != 2 for s in shapes):
        raise DataError(f"embedding shards must be 2-D with one width, got shapes {shapes}")
    emb = np.empty((sum(s[0] for s in shapes), dims.pop()), np.float32)
    paths: list[str] = []
    start = 0
    for (load_emb, load_paths), shape in zip(loaders, shapes):
        emb[start : start + shape[0]] = load_emb()
        names = [str(p) for p in load_paths()]
        if len(names) != shape[0]:
            raise DataError(f"a shard has {shape[0]} embeddings but {len(names)} paths")
        paths.extend(names)
        start += shape[0]
    return paths, emb


def _csv_paths(rows_csv: Path) -> list[str]:
    with rows_csv.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        return [row[0] for row in reader]


def _threshold(args: argparse.Namespace, embedder) -> float:
    from facenet.cluster import graph_threshold

    if args.threshold is not None:
        return args.threshold
    return graph_threshold(embedder, args.far) if args.method == "graph" else embedder.threshold


def run_cluster(args: argparse.Namespace) -> int:
    from PIL import Image

    from facenet.batch import BatchReport, collect, embed_photos
    from facenet.cluster import assign_incremental, cluster_embeddings, write_clusters
    from facenet.fileio import atomic_write

    if not args.photos and not args.embeddings:
        raise DataError("give photo folders or files, or --embeddings shards")
    previous = _read_previous(Path(args.previous)) if args.previous else None
    known = set(previous[0]) if previous else set()
    # the model: to embed photos, or for its thresholds (not needed for shards with --threshold)
    embedder = embedder_from_args(args) if args.photos or args.threshold is None else None
    report = BatchReport("cluster")
    report_path = Path(args.skipped_report) if args.skipped_report else Path(args.out) / "skipped.json"
    files: list[str] = []
    crops: list = []
    blocks = []
    if embedder is not None and args.photos:
        paths = [p for p in expand_image_paths(args.photos) if str(p) not in known]  # earlier photos: not again
        thumb = lambda crop: np.asarray(Image.fromarray(crop).resize((THUMB, THUMB), Image.BILINEAR))  # noqa: E731
        rows, emb = collect(
            embed_photos(
                embedder, paths, report, all_faces=all_faces(args), batch_size=args.batch_size, workers=args.workers
            )
            if paths
            else iter(()),
            embedder.embedding_size,
            keep_crop=thumb if args.sheets else (lambda crop: None),
        )
        report.write(report_path)
        files += [str(r.path) for r in rows]
        crops += [r.crop if args.sheets else r.path for r in rows]
        blocks.append(emb)
    if args.embeddings:
        shard_paths, shard_emb = read_shards(args.embeddings)
        fresh = np.array([p not in known for p in shard_paths], bool)
        files += [p for p, f in zip(shard_paths, fresh) if f]
        crops += [p for p, f in zip(shard_paths, fresh) if f]  # no crops: the sheets show the photos
        blocks.append(shard_emb if fresh.all() else shard_emb[fresh])
        del shard_emb
    emb = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    del blocks
    if not files and not previous:
        return report.finish(args.strict, report_path)
    threshold = _threshold(args, embedder)
    if previous:
        old_files, old_emb, old_labels = previous
        old_labels, labels = assign_incremental(
            old_emb,
            old_labels,
            emb,
            threshold,
            k=args.k,
            min_size=args.min_size,
            graph_algorithm=args.graph_algorithm,
            index=args.index,
            seed=args.seed,
        )
        files, crops = old_files + files, list(old_files) + crops
        emb, labels = np.concatenate([old_emb, emb]), np.concatenate([old_labels, labels])
        print(f"{len(old_files)} face(s) from {args.previous} kept their clusters; {len(emb) - len(old_files)} new")
    else:
        labels = cluster_embeddings(
            emb,
            method=args.method,
            threshold=threshold,
            linkage=args.linkage,
            min_size=args.min_size,
            seed=args.seed,
            k=args.k,
            graph_algorithm=args.graph_algorithm,
            index=args.index,
        )
    manifest = write_clusters(args.out, files, labels, thumb=THUMB, crops=crops, sheets=args.sheets)
    state = {"paths": np.array(files, dtype=str), "embeddings": emb, "labels": labels}
    atomic_write(Path(args.out) / STATE, lambda tmp: _save_npz(tmp, state))
    print(
        f"{len(manifest['clusters'])} cluster(s), {len(manifest['unclustered'])} unclustered face(s), "
        f"{len(report.skipped)} skipped photo(s) (threshold {threshold:.4f}); manifest"
        + (" and contact sheets (the faces used)" if args.sheets else "")
        + f" in {args.out}"
    )
    return report.finish(args.strict, report_path) if args.photos else 0


def _save_npz(path: Path, arrays: dict) -> None:
    with path.open("wb") as fh:  # a file object: no copy of the arrays in memory, no ".npz" appended
        np.savez(fh, **arrays)


def _read_previous(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    state = folder / STATE
    if not state.is_file():
        raise DataError(f"{state} not found: --previous wants the --out folder of an earlier `facenet cluster`")
    with np.load(state) as z:
        paths, emb, labels = [str(p) for p in z["paths"]], z["embeddings"].astype(np.float32), z["labels"]
    manifest = json.loads((folder / "manifest.json").read_text())
    if len(manifest["unclustered"]) + sum(len(v) for v in manifest["clusters"].values()) != len(paths):
        raise DataError(f"{folder}: manifest.json and {STATE} disagree; rerun the earlier clustering")
    return paths, emb, labels.astype(np.int64)


def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="group photos by person (manifest + contact sheets)",
        description="Embed every photo and group them by identity. Writes DIR/manifest.json "
        "(cluster -> files, plus 'unclustered'), a contact sheet PNG per group showing the face "
        "crops used, captioned with their file names, and DIR/embeddings.npz (paths, embeddings, labels; "
        "owner-only) for --previous. Photos without a usable face are skipped and listed in "
        "DIR/skipped.json. The default method (graph) scales to millions of faces: a FAISS "
        "k-nearest-neighbour graph pruned at the model's calibrated distance, split by Leiden. "
        "--embeddings clusters precomputed shards instead of photos; --previous DIR adds new photos to "
        "an earlier run's clusters without re-clustering it. Exit 0, or 2 when no photo could be "
        "used (or, with --strict, when any was skipped).",
    )
    p.add_argument("photos", nargs="*", metavar="PHOTO_DIR", help="folder(s) or files of photos")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--embeddings",
        nargs="+",
        metavar="SHARD",
        help="cluster precomputed embeddings: `facenet embed --out DIR/` shard directories, `facenet embed` .npy "
        "files (with their .rows.csv) or .npz files with 'embeddings' and 'paths' (e.g. an earlier "
        "DIR/embeddings.npz); sheets then show the photos",
    )
    p.add_argument(
        "--previous",
        metavar="DIR",
        help="an earlier run's --out folder: its faces keep their clusters, new faces join them (or form new "
        "ones) by nearest neighbours, nothing is re-clustered; photos already in it are not embedded again",
    )
    p.add_argument(
        "--method",
        choices=("graph", "agglomerative", "dbscan", "chinese_whispers"),
        default="graph",
        help="clustering method (default: graph = pruned kNN graph + Leiden, O(n k) memory; agglomerative, "
        "as in the paper, needs O(n^2) memory and time)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="squared-L2 distance below which faces may go together (default: graph: the model's FAR-table "
        "distance at --far; other methods: the model's verification threshold)",
    )
    p.add_argument(
        "--far",
        type=float,
        default=1e-6,
        help="graph: per-pair false-accept rate whose calibrated distance prunes the graph (default 1e-6)",
    )
    p.add_argument("--k", type=int, default=10, help="graph: neighbours searched per face (default 10)")
    p.add_argument(
        "--graph-algorithm",
        choices=("leiden", "components"),
        default="leiden",
        help="graph: Leiden communities (default) or the connected components",
    )
    p.add_argument(
        "--index",
        choices=("auto", "exact", "ivf"),
        default="auto",
        help="graph: FAISS neighbour search (default auto: exact up to 20,000 faces, IVF above)",
    )
    p.add_argument(
        "--linkage",
        choices=("average", "complete", "single"),
        default="average",
        help="agglomerative linkage (default: average)",
    )
    p.add_argument("--min-size", type=int, default=2, help="smaller groups go to 'unclustered' (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for graph (Leiden) and chinese_whispers (default 0)")
    p.add_argument(
        "--no-sheets",
        dest="sheets",
        action="store_false",
        help="write the manifest only, no contact sheets (for large collections)",
    )
    add_batch_options(p, "DIR/skipped.json")
    add_which_option(p, None)
    add_model_options(p)
    p.set_defaults(func=run_cluster)
